"""card/live.py: no card, no section and no thread; the last render holds SIGINT."""

import sys
import threading
from pathlib import Path

from metaflow_extensions.torchrun.plugins.launch.command import plan_launch, parse_torchrun_args
from metaflow_extensions.torchrun.plugins.launch.program import Entrypoint


def _plan(tmp_path: Path, nproc: str = "2"):
    return plan_launch(
        python=sys.executable, num_nodes=2, nproc_per_node=nproc, rdzv_id="job-a0-c1",
        rdzv_endpoint="", join_timeout=600, default_log_dir=str(tmp_path),
        flags=parse_torchrun_args(None), bootstrap="bootstrap.py",
        entry=Entrypoint("script", "train.py", str(tmp_path)), program_args=[],
    )


def test_without_a_card_there_is_no_section_and_no_thread(tmp_path):
    from rendezvous.topology import Topology

    from metaflow_extensions.torchrun.plugins.card.live import JobCard
    from metaflow_extensions.torchrun.plugins.launch.settings import StepSettings

    threads = threading.active_count()
    card = JobCard.for_call(1, _plan(tmp_path), Topology(0, 2, "127.0.0.1"),
                            StepSettings(None, None, 600, 0), None)
    assert card is None and threading.active_count() == threads


def test_the_last_render_holds_sigint_until_it_is_done():
    import os
    import signal

    import pytest

    from metaflow_extensions.torchrun.plugins.card.live import _interrupts_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_deferred(deliver=True):
            os.kill(os.getpid(), signal.SIGINT)
            done.append("rendered")
    assert done == ["rendered"]
    with _interrupts_deferred(deliver=False):  # after a failure: run raises that instead
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
