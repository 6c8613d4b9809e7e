"""``python -m bench.rendezvous_round``: read the options, prepare the parent, print the table."""

import argparse
import gc
import importlib
import os
import select
import socket
import sys
import time
from typing import Optional, Sequence

# Read when torch loads: keeps TCPStore's warning per connection (it cannot
# look up the peer's name, which is the point of the namespace) off the output.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

# Imported before any fork, so that no node pays for it inside a measurement.
import torch  # noqa: E402

import rendezvous  # noqa: E402

from .parent import ForeignLoad, run_benchmark  # noqa: E402
from bench.store_ports import LOOPBACK  # noqa: E402

from .protocol import BACKENDS, TIME_RECORD, Options  # noqa: E402
from .report import format_table  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rendezvous_round",
        description=sys.modules[__package__].__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="2,8,32,128",
                        help="comma-separated node counts (default: %(default)s)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated backends to measure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements per backend, node count and start order "
                             "(default: %(default)s)")
    parser.add_argument("--late-delay", type=float, default=0.2,
                        help="seconds node 0 starts after the others in the late variant "
                             "(default: %(default)s)")
    parser.add_argument("--monitor-interval", type=float, default=0.1,
                        help="how often the other nodes poll num_nodes_waiting() in the restart, "
                             "as torchrun's --monitor-interval (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one measurement may take before its nodes are killed "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        node_counts = tuple(int(part) for part in args.nodes.split(",") if part.strip())
    except ValueError:
        parser.error(f"--nodes {args.nodes!r}: expected comma-separated integers")
    if not node_counts or min(node_counts) < 2:
        parser.error("--nodes: every count must be at least 2")
    if max(node_counts) * TIME_RECORD.size > select.PIPE_BUF:
        parser.error(f"--nodes: at most {select.PIPE_BUF // TIME_RECORD.size} nodes")
    backends = tuple(part.strip() for part in args.backends.split(",") if part.strip())
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    if args.repeats < 1 or args.late_delay <= 0 or args.monitor_interval <= 0 or args.timeout <= 0:
        parser.error("--repeats, --late-delay, --monitor-interval and --timeout must be positive")
    return Options(
        node_counts, backends, args.repeats, args.late_delay, args.monitor_interval, args.timeout
    )


def _warn_unless_loopback_only() -> None:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        print(f"warning: network interfaces {', '.join(interfaces)} are visible: outside the "
              f"namespace of run_in_netns.sh, TCPStore's reverse DNS lookups may stall for "
              f"seconds and distort the numbers.", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    _warn_unless_loopback_only()
    rendezvous.register()
    # Every backend's creator imports its implementation on first use; import
    # them all here, before forking, so that no node pays an import inside the
    # measurement.
    for module in ("rendezvous.handler",
                   "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
                   "torch.distributed.elastic.rendezvous.static_tcp_rendezvous"):
        importlib.import_module(module)

    # Python's socket module imports its idna codec on the first name lookup;
    # a node would pay that import inside the measurement, so do it here once.
    socket.getaddrinfo(LOOPBACK, 0)
    # Objects frozen here are never touched by the collector in the nodes, which
    # keeps the forked copies sharing their memory with the parent.
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    foreign_load = ForeignLoad()
    samples = run_benchmark(options)
    print(format_table(samples, options))
    print()
    print(f"Medians of {options.repeats} runs each; {time.monotonic() - started:.0f} s in all; "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs, of which other programs kept "
          f"{foreign_load.cpus():.2f} busy on average meanwhile.")
    failures = sum(len(bucket.failures) for bucket in samples.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
