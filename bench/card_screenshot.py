"""Screenshots of a real @torchrun card in headless Chromium, for the README.

    .venv/bin/python -m bench.card_screenshot --out docs/images

(from the repository root: it runs a copy of ``tests/flows/card_job.py`` with the test
suite's ``tests/harness``). Needs ``chromium`` on PATH (Debian: ``apt-get install -y chromium``).

Three runs of the flow, 2 nodes x 2 processes: ranks that print a few training-like lines
and succeed (Metaflow's ``default`` card); the same where global rank 3 raises (``blank``
card); and a hung job, where rank 1 sleeps before an all_reduce until ``hang_fail_after``
fails the job (``tests/flows/workers/hang.py``, ``blank`` card). For each, node 0's card is
fetched with Metaflow's own client (``metaflow.cards.get_cards``), saved as HTML, and
rendered by headless Chromium into ``card-success.png``, ``card-failure.png`` and
``card-hang.png``. Chromium runs with a time limit and is
never left running.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from tests.harness.flow_runs import FLOWS, FlowRunner

_SAVE_CARD = r"""
import sys
from metaflow import Task
from metaflow.cards import get_cards

cards = list(get_cards(Task(sys.argv[1], attempt=0)))
open(sys.argv[2], "w").write(cards[0].get())
"""
_CHROMIUM_SECONDS = 60


def screenshot(card_type: str, script_args: dict, out: Path, width: int, height: int,
               worker: str = "card_ranks.py", torchrun_args: Optional[dict] = None) -> None:
    with tempfile.TemporaryDirectory(prefix="card-screenshot-") as root:
        runner = FlowRunner(Path(root))
        # Copies of the flow, its helper and its worker: the card names no path of this checkout.
        flow = Path(root) / "flow" / "card_job.py"
        (flow.parent / "workers").mkdir(parents=True)
        shutil.copy(FLOWS / "card_job.py", flow)
        shutil.copy(FLOWS / "lines.py", flow.parent)
        shutil.copy(FLOWS / "workers" / worker, flow.parent / "workers")
        # Cards and the run's datastore in one place, as in the tests
        # (tests/integration/test_cards.py).
        env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": root, "TORCHRUN_TEST_CARD_TYPE": card_type}
        try:
            run = runner.run(str(flow), "--script", f"workers/{worker}",
                             "--script_args", json.dumps(script_args),
                             "--torchrun_args", json.dumps(torchrun_args or {}), env=env)
        finally:
            runner.kill_all()
        found = re.search(r"CARD TASK node=0 pathspec=(\S+)", run.output)
        if found is None:
            raise SystemExit(f"the flow printed no task of node 0:\n{run.output[-3000:]}")
        html = Path(root) / "card.html"
        subprocess.run([sys.executable, "-c", _SAVE_CARD, found.group(1), str(html)],
                       env={**runner.env, **env}, cwd=root, check=True)
        profile = Path(root) / "chromium-profile"
        chromium = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--virtual-time-budget=8000", f"--screenshot={out}", html.as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            chromium.wait(_CHROMIUM_SECONDS)
        finally:
            if chromium.poll() is None:  # never leave a browser behind
                os.killpg(chromium.pid, signal.SIGKILL)
                chromium.wait()
    print(f"{out}: node 0's {card_type} card, flow exit code {run.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNG files")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        raise SystemExit("chromium is not on PATH: apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    screenshot("default", {"steps": 10}, out / "card-success.png", args.width, args.height)
    # The other ranks wait for a file that never comes, until the failure stops them.
    screenshot("blank", {"steps": 10, "fail-rank": 3, "release-file": "never-released"},
               out / "card-failure.png", args.width, args.height)
    screenshot("blank", {"scenario": "sleep", "culprit": 1, "hold": 300},
               # Taller: the hang section comes below the root cause.
               out / "card-hang.png", args.width, args.height + 900, worker="hang.py",
               torchrun_args={"rdzv_conf": "hang_timeout=10,hang_fail_after=10"})


if __name__ == "__main__":
    main()
