"""``python -m bench.scale``: read the options, run each node count, print the table."""

import argparse
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import torch  # noqa: E402,F401  (imported once, before any fork)

from rendezvous.settings import RendezvousSettings  # noqa: E402

from .parent import measure_baseline, measure_job, raise_file_limit  # noqa: E402

PARTS = ("round", "idle", "restart", "failure", "silent")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale",
                                     description=sys.modules[__package__].__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="64,256,1024,4096")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    options = parser.parse_args(argv)
    parts = options.parts.split(",")
    raise_file_limit()
    settings = RendezvousSettings(join_timeout=options.timeout,
                                  heartbeat_timeout=options.heartbeat_timeout)
    baseline = None
    if "idle" in parts:
        baseline = measure_baseline(settings, options.settle_seconds, options.idle_seconds,
                                    options.timeout)
        print(f"node 0 alone: {baseline * 1e3:.2f} ms CPU per s", flush=True)
    for num_nodes in [int(n) for n in options.nodes.split(",")]:
        figures = measure_job(num_nodes, settings, parts, options.settle_seconds,
                              options.idle_seconds, options.timeout)
        per_node = (None if figures.idle_cpu_s_per_s is None else
                    (figures.idle_cpu_s_per_s - baseline) / (num_nodes - 1) * 1e6)
        print(f"{num_nodes} nodes: {figures} idle us/node/s={per_node}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
