"""Count exit-time aborts of a script that never calls ``destroy_process_group()``.

On torch 2.13 with gloo such a script often finishes all its work and is then
killed by SIGABRT at interpreter exit (``terminate called without an active
exception``), which fails the whole job. The worker bootstrap of
``current.torch.run`` destroys the groups a successful program left behind.
This runs ``exit_aborts/no_destroy.py`` (one all_reduce, no destroy) on 4
processes ``--repeats`` times with each launcher, alternating:

- ``current.torch.run``: a local Metaflow run of ``exit_aborts/flow.py``,
  2 nodes x 2 processes;
- plain ``torchrun --standalone --nproc-per-node=4`` of the same script.

A run counts as an exit-time abort when it failed and its output shows
SIGABRT or "terminate called"; any other failure is counted apart. Run it in a
loopback-only network namespace, where TCPStore's reverse DNS lookups cannot
stall::

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.exit_aborts --repeats 20

(from the repository root: it runs the flow with the test suite's ``tests/harness``).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.harness.flow_runs import FlowRunner

SCRIPTS = Path(__file__).resolve().parent / "exit_aborts"

_ABORT_SIGNS = ("SIGABRT", "terminate called", "Signals.SIGABRT", "exitcode: -6")


def outcome(returncode: int, output: str) -> str:
    if returncode == 0:
        return "ok"
    return "aborted at exit" if any(sign in output for sign in _ABORT_SIGNS) else "other failure"


def run_flow(scratch: Path, repetition: int) -> str:
    root = scratch / f"flow-{repetition}"
    root.mkdir()
    runner = FlowRunner(root)
    try:
        run = runner.run(str(SCRIPTS / "flow.py"), timeout=300)
    finally:
        runner.kill_all()
    return outcome(run.returncode, run.output)


def run_plain_torchrun(scratch: Path, repetition: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
         str(SCRIPTS / "no_destroy.py")],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return outcome(done.returncode, done.stdout + done.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    launchers = {
        "current.torch.run, 2 nodes x 2": run_flow,
        "plain torchrun --standalone, 4 processes": run_plain_torchrun,
    }
    counts = {name: {"ok": 0, "aborted at exit": 0, "other failure": 0} for name in launchers}
    with tempfile.TemporaryDirectory(prefix="exit-aborts-") as root:
        scratch = Path(root)
        for repetition in range(args.repeats):
            order = list(launchers) if repetition % 2 == 0 else list(launchers)[::-1]
            for name in order:
                result = launchers[name](scratch, repetition)
                counts[name][result] += 1
                print(f"#{repetition + 1} {name}: {result}", flush=True)
    print()
    print("| launcher | runs | aborted at exit | other failures |")
    print("| --- | ---: | ---: | ---: |")
    for name, count in counts.items():
        print(f"| {name} | {args.repeats} | {count['aborted at exit']} | {count['other failure']} |")


if __name__ == "__main__":
    main()
