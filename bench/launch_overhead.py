"""Time ``current.torch.run`` against a bare ``torchrun --rdzv-backend=static`` of the same program.

Run it inside a loopback-only network namespace (see ``run_in_netns.sh``), or
TCPStore's reverse DNS lookups can add 5 s stalls to either launcher::

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.launch_overhead --repeats 9

(from the repository root: it runs the flow with the test suite's ``tests/harness``).

One local Metaflow run of ``launch/launch_flow.py`` (2 nodes x 1 process):
inside its ``@torchrun`` step both nodes launch the trivial program
``launch/trivial.py`` ``--repeats`` times with each launcher, in alternating
order, so that both share the same machine, load and run. A sample is the
wall time of one launch on node 0, from the call until it returned (for the
bare launcher: until ``python -m torch.distributed.run`` exited). Metaflow's
own start-up is outside every sample. It prints the medians, their ratio and
their difference.
"""

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from tests.harness.flow_runs import FlowRunner

BENCH = Path(__file__).resolve().parent

_SAMPLE = re.compile(r"SAMPLE node=(?P<node>\d+) launcher=(?P<launcher>.+) seconds=(?P<seconds>[\d.]+)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--base-port", type=int, default=29600,
                        help="static torchrun uses this port plus the repetition number")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="launch-overhead-") as root:
        runner = FlowRunner(Path(root))
        try:
            run = runner.run(
                str(BENCH / "launch" / "launch_flow.py"), "--repeats", str(args.repeats),
                env={"BENCH_BASE_PORT": str(args.base_port)}, timeout=60 * 60,
            )
        finally:
            runner.kill_all()
    if run.returncode != 0:
        sys.exit("the benchmark flow failed:\n" + run.output[-6000:])

    samples = {}
    for line in run.task_lines("train"):
        match = _SAMPLE.match(line)
        if match and match["node"] == "0":
            samples.setdefault(match["launcher"], []).append(float(match["seconds"]))
    ours, bare = samples["current.torch.run"], samples["bare torchrun static"]

    print(f"2 nodes x 1 process, trivial program, {args.repeats} launches each, node 0 wall time (s)")
    print(f"{'launcher':<22}{'median':>9}{'min':>9}{'max':>9}")
    for name, values in (("current.torch.run", ours), ("bare torchrun static", bare)):
        print(f"{name:<22}{statistics.median(values):>9.3f}{min(values):>9.3f}{max(values):>9.3f}")
    difference = statistics.median(ours) - statistics.median(bare)
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"median ratio {ratio:.3f}, difference {difference:+.3f} s")


if __name__ == "__main__":
    main()
