"""Property-based checks of ``current.torch.run`` arguments through a real flow: a clear error
or a correct run.

A real single-node flow serves one ``current.torch.run`` call per example
(tests/flows/run_requests.py), so that torch, the backend and the launcher have
their say too, and a hang would show as a call that never answers. Most examples
go through the pure command building instead, with torchrun's own argument parser
as the judge: tests/unit/test_launch_command.py.
"""

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.launch.command import (
    parse_torchrun_args,
    resolve_nproc_per_node,
)
from metaflow_extensions.torchrun.plugins.launch.program import entrypoint_argv
from tests.harness.flow_runs import FlowRunner, RunningFlow

pytestmark = pytest.mark.timeout(300)


# Through a real flow: real torchrun flags with good and bad values, and flags run() refuses.
FLOW_FLAGS = [
    ("max_restarts", 0), ("max_restarts", "x"), ("max_restarts", -1), ("monitor_interval", "0.05"),
    ("monitor_interval", 0), ("rdzv_conf", "heartbeat_timeout=30"), ("rdzv_conf", "join_timeout=x"),
    ("rdzv_conf", "oops"), ("rdzv_conf", "bogus=1"), ("role", "trainer"), ("role", True),
    ("local_ranks_filter", "x"), ("start_method", "bogus"), ("event_log_handler", "bogus"),
    ("log_dir", "per-rank-logs"), ("log_dir", "/proc/no-such-dir"), ("bogus_flag", 1),
    ("nnodes", 3), ("nnode", 3), ("help", True),
]


def as_tokens(flags):
    return [f"--{name}" if value is True else f"--{name}={value}" for name, value in flags]


FLOW_CALLS = st.fixed_dictionaries({}, optional={
    "entrypoint_args": st.one_of(
        st.dictionaries(st.sampled_from(["text", "n", "flag"]),
                        st.one_of(st.booleans(), st.none(), st.text(max_size=6), st.integers(-5, 5)),
                        max_size=2),
        st.lists(st.text(max_size=6), max_size=3),
    ),
    "nproc_per_node": st.sampled_from([1, 2, "1", 0, "two", True, 1.5]),
    "torchrun_args": st.lists(st.sampled_from(FLOW_FLAGS), max_size=2, unique_by=lambda flag: flag[0])
    .flatmap(lambda flags: st.sampled_from([dict(flags), as_tokens(flags)])),
})


class ServedCalls:
    """tests/flows/run_requests.py running in an isolated Metaflow environment: one call per request."""

    def __init__(self, root: Path):
        self.runner = FlowRunner(root)
        self.requests = root / "requests"
        self.requests.mkdir()
        self.flow = RunningFlow(
            self.runner.start("run_requests.py", env={"TORCHRUN_TEST_REQUESTS": str(self.requests)}))
        self.number = 0

    def send(self, request: dict) -> int:
        self.number += 1
        partial = self.requests / f"{self.number}.partial-request"
        partial.write_text(json.dumps(request))
        partial.replace(self.requests / f"{self.number}.request.json")
        return self.number

    def call(self, arguments: dict, timeout: float) -> tuple:
        """``(request number, answer)`` of one ``current.torch.run(**arguments)``."""
        number = self.send({"call": arguments})
        path = self.requests / f"{number}.response.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.flow.process.poll() is None, self.flow.output()[-4000:]
            assert time.monotonic() < deadline, (
                f"run({arguments!r}) still runs after {timeout} s:\n{self.flow.output()[-4000:]}")
            time.sleep(0.05)
        return number, json.loads(path.read_text())

    def echoes(self, number: int) -> list:
        """What each rank of call ``number`` wrote, by rank."""
        found = [json.loads(path.read_text()) for path in self.requests.glob(f"{number}-*.json")]
        return sorted(found, key=lambda echo: echo["rank"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    calls = ServedCalls(tmp_path_factory.mktemp("served"))
    try:
        yield calls
        calls.send({"stop": True})
        calls.flow.finish(timeout=60)
    finally:
        calls.runner.kill_all()


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(arguments=FLOW_CALLS)
def test_run_in_a_real_flow_fails_clearly_or_runs_correctly(served, arguments):
    try:  # what run() checks before it starts anything
        flags = parse_torchrun_args(arguments.get("torchrun_args"))
        program_args = entrypoint_argv(arguments.get("entrypoint_args"))
        nproc = resolve_nproc_per_node(arguments.get("nproc_per_node"), flags.nproc_per_node, None, 0)
        refusal = None
    except TorchrunArgumentError as error:
        refusal = str(error)
    # A call takes a few seconds; this only turns a hang into a failure.
    number, answer = served.call(arguments, timeout=120)
    if refusal is not None:
        assert answer["type"] == "TorchrunArgumentError" and refusal in answer["message"], answer
        return
    if answer["outcome"] == "error":
        event(f"run() raised {answer['type']}")
        assert answer["type"] in ("TorchrunArgumentError", "TorchrunFailed"), answer
        assert "Traceback" not in answer["message"], answer["message"]
        return
    event("a correct run")
    world = int(nproc)
    assert served.echoes(number) == [
        {"rank": rank, "world": world, "argv": program_args} for rank in range(world)]
    assert answer["exit_code"] == 0 and answer["restarts"] == 0
    if flags.log_dir is not None:
        assert answer["log_dir"] == str(served.runner.root / flags.log_dir)
