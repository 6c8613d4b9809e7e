"""``python -m bench.scale``: read the options, measure each node count and backend, print the table."""

import argparse
import os
import sys
from typing import List, Optional, Sequence

# Read when torch loads: keeps TCPStore's warning per connection (it cannot
# look up the peer's name, which is the point of the namespace) off the output.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import torch  # noqa: E402,F401  (imported once, before any fork)

import rendezvous  # noqa: E402,F401  (registers the metaflow backend)
from rendezvous.settings import RendezvousSettings  # noqa: E402

from .parent import MeasurementFailed, measure_baseline, measure_job, raise_file_limit  # noqa: E402
from .report import Row, format_table  # noqa: E402

PARTS = ("round", "idle", "restart", "failure", "silent")
# What c10d can be measured at: it does not pass failures on, and has no
# heartbeat timeout of its own to compare (see RESULTS-scale.md).
C10D_PARTS = ("round", "idle", "restart")


def _numbers(text: str) -> List[int]:
    return [int(item) for item in text.split(",") if item]


def _load() -> str:
    with open("/proc/loadavg") as loadavg:
        return loadavg.read().split()[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=sys.modules[__package__].__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="64,256,1024,4096",
                        help="node counts for the metaflow backend (default: %(default)s)")
    parser.add_argument("--inline-nodes", default="",
                        help="node counts for the metaflow backend with the simulated nodes' "
                             "store calls on the calling thread (see nodes.InlineConnection); "
                             "empty for none (default: %(default)s)")
    parser.add_argument("--c10d-nodes", default="64,256",
                        help="node counts for c10d; empty for none (default: %(default)s)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="what to measure, of %(default)s")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="window over which node 0's CPU is measured (default: %(default)s)")
    parser.add_argument("--settle-seconds", type=float, default=3.0,
                        help="pause after a round before measuring on (default: %(default)s)")
    parser.add_argument("--heartbeat-timeout", type=float, default=15.0,
                        help="the metaflow backend's heartbeat_timeout (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="bound of every step of a measurement, in s (default: %(default)s)")
    options = parser.parse_args(argv)
    parts = options.parts.split(",")
    raise_file_limit()
    settings = RendezvousSettings(join_timeout=options.timeout,
                                  heartbeat_timeout=options.heartbeat_timeout)
    plan = [("metaflow", False, n, parts) for n in _numbers(options.nodes)]
    plan += [("metaflow", True, n, parts) for n in _numbers(options.inline_nodes)]
    plan += [("c10d", False, n, [p for p in parts if p in C10D_PARTS])
             for n in _numbers(options.c10d_nodes)]
    baselines = {}
    rows = []
    for backend, inline_calls, num_nodes, backend_parts in plan:
        if "idle" in backend_parts and backend not in baselines:
            baselines[backend] = measure_baseline(backend, settings, options.settle_seconds,
                                                  options.idle_seconds, options.timeout)
            print(f"{backend}: node 0 alone uses {baselines[backend] * 1e3:.2f} ms CPU per s",
                  flush=True)
        load_before = _load()
        try:
            figures = measure_job(backend, num_nodes, settings, backend_parts,
                                  options.settle_seconds, options.idle_seconds, options.timeout,
                                  inline_calls)
            error = None
        except MeasurementFailed as failure:
            figures, error = None, str(failure)
        rows.append(Row(backend, inline_calls, num_nodes, figures, baselines.get(backend), error,
                        f"{load_before}-{_load()}"))
        print(rows[-1], flush=True)
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
