"""Console throughput of a local run: Metaflow's reader of a task's output against ours.

    .venv/bin/python -m bench.console_lines --lines 50000 --repeats 3

(from the repository root). A local run of ``tests/flows/two_nodes.py`` on 2 nodes x 1
process, each rank writing ``--lines`` lines of about 105 bytes to stderr
(``tests/flows/workers/flood_stderr.py``), all of which reach the console of
``python flow.py run`` through Metaflow's local runtime. "metaflow": the runtime
reads the task's output with its own ``Worker.read_logline`` (one line per poll
event); "whole lines": with ``metaflow_compat.show_every_line`` (every complete line
of one read of the pipe), as ``@torchrun`` steps have it. A sample is the wall time of
the run, until the runtime's process ends and every line is on its stdout; the two
alternate. Prints each sample and the median ratio.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from tests.harness.flow_runs import FLOWS, FlowRunner

# Runs the flow with Metaflow's own reader: the @torchrun decorator finds show_every_line
# replaced by a no-op when its step_init imports it.
_METAFLOW_READER = (
    "import runpy, sys\n"
    "import metaflow_extensions.torchrun.plugins.metaflow_compat as compat\n"
    "compat.show_every_line = lambda step_name: None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
READERS = ("metaflow", "whole lines")


def run_once(reader: str, lines: int, runner: FlowRunner) -> float:
    """Seconds for one run, checking that every line reached the console."""
    flow_args = [str(FLOWS / "two_nodes.py"), "run", "--script", "workers/flood_stderr.py",
                 "--script_args", json.dumps({"lines": lines}), "--nproc", "1"]
    command = ([sys.executable, "-c", _METAFLOW_READER, *flow_args] if reader == "metaflow"
               else [sys.executable, *flow_args])
    started = time.monotonic()
    done = subprocess.run(command, env=runner.env, cwd=runner.root, capture_output=True,
                          text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    shown = len(re.findall(r"\[rank\d\]: flood \d+ \d+ x+$", done.stdout + done.stderr, re.MULTILINE))
    if shown != 2 * lines:
        raise SystemExit(f"{shown} of {2 * lines} lines reached the console")
    return elapsed


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000, help="lines per rank")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    samples: Dict[str, List[float]] = {reader: [] for reader in READERS}
    with tempfile.TemporaryDirectory(prefix="console-lines-") as root:
        runner = FlowRunner(Path(root))  # the tests' isolated Metaflow environment
        for repeat in range(args.repeats):
            for reader in READERS:
                seconds = run_once(reader, args.lines, runner)
                samples[reader].append(seconds)
                print(f"{reader:>12}: {seconds:.2f} s ({2 * args.lines / seconds:,.0f} lines/s)",
                      flush=True)
    medians = {reader: statistics.median(values) for reader, values in samples.items()}
    print(f"median run: metaflow {medians['metaflow']:.2f} s, whole lines "
          f"{medians['whole lines']:.2f} s; whole lines / metaflow = "
          f"{medians['whole lines'] / medians['metaflow']:.2f} (time, lower is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
