"""What the live card costs node 0's store: requests and bytes per node per second.

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.card_traffic --nodes 2,8,32

(from the repository root, whose ``card.exchange`` it then measures).

One real TCPStore server plays node 0's store. For each job size, every
simulated node has the ``JobState`` of a node whose step has a card and the
``StoreRelay`` its relay process runs (here in this process, all nodes in
threads), offered every new payload and ticked as the relay is,
while each of its ``--nproc`` ranks prints a line every ``--line-seconds`` (a
chatty training loop: every rank always has a new line). Node 0 reads as it
does under a card. The counts are the relay's own (``requests``,
``bytes_sent``, ``bytes_received``: store calls and payload bytes, without
TCPStore's framing of a few bytes per call). Printed per job size: the writes
of one other node (requests/s and payload bytes/s into node 0's store) and
node 0's reads (requests/s, bytes/s out of it), each per other node.
"""

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import List

# Node 0's waits end in TCPStore time-outs, each of which torch logs with a warning;
# the relay's own stderr goes nowhere, here it would drown the table.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from torch.distributed import TCPStore  # noqa: E402 - after the log level

# The card's model and relay need no Metaflow (card.state, card.relay).
from metaflow_extensions.torchrun.plugins.card.relay import TICK_SECONDS, StoreRelay  # noqa: E402
from metaflow_extensions.torchrun.plugins.card.state import CallLayout, JobState  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(nodes: int, nproc: int, seconds: float, line_seconds: float,
            refresh_seconds: float, root: Path) -> str:
    port = _free_port()
    server = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                      timeout=timedelta(seconds=30))
    run_id = f"bench-{nodes}"
    states: List[JobState] = []
    relays: List[StoreRelay] = []
    for node in range(nodes):
        layout = CallLayout(call=1, node_index=node, num_nodes=nodes, nproc_per_node=str(nproc),
                            nproc=nproc, rdzv_id=run_id, log_dir=str(root / str(node)))
        states.append(JobState(layout, (), f"127.0.0.1:{port}"))
        relays.append(StoreRelay("127.0.0.1", port, run_id, nodes, node,
                                 lines_seconds=max(1.0, refresh_seconds)))
    stop = threading.Event()

    def print_lines() -> None:
        step = 0
        while not stop.wait(line_seconds):
            step += 1
            for node, state in enumerate(states):
                for local in range(nproc):
                    rank = node * nproc + local
                    state.line(  # what the log pump hands the card
                        f"[rank{rank}]: epoch 3 step {step} loss {1.0 / step:.6f} "
                        f"lr 0.000300 tokens/s 51234.5"
                    )

    def tick(state: JobState, relay: StoreRelay) -> None:
        # What card.exchange and card.relay.main do for one node.
        while not stop.wait(TICK_SECONDS):
            payload = state.payload()
            if payload is not None and not relay.is_reader:
                relay.offer(json.dumps(payload.data).encode("utf-8"), payload.state_changed)
            for raw in relay.tick():
                state.merge(json.loads(raw))

    threads = [threading.Thread(target=print_lines)]
    threads += [threading.Thread(target=tick, args=pair) for pair in zip(states, relays)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    # The counts at the end of the period (node 0's tick may still wait a few seconds).
    write_requests = sum(r.requests for r in relays[1:])
    write_bytes = sum(r.bytes_sent for r in relays[1:])
    read_requests, read_bytes = relays[0].requests, relays[0].bytes_received
    stop.set()
    for thread in threads:
        thread.join()
    del server
    per_node_second = (nodes - 1) * seconds
    write_requests /= per_node_second
    write_bytes /= per_node_second
    read_requests /= per_node_second
    read_bytes /= per_node_second
    return (f"| {nodes} | {nproc} | {write_requests:.2f} | {write_bytes:,.0f} | "
            f"{read_requests:.2f} | {read_bytes:,.0f} | "
            f"{write_requests + read_requests:.2f} | {write_bytes + read_bytes:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="2,8,32", help="job sizes, comma-separated")
    parser.add_argument("--nproc", type=int, default=8, help="ranks per node")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--line-seconds", type=float, default=0.1)
    parser.add_argument("--refresh-seconds", type=float, default=5,
                        help="@card(refresh_interval=...), Metaflow's default 5")
    args = parser.parse_args()
    print(f"{args.nproc} ranks per node, a line per rank every {args.line_seconds} s, "
          f"refresh_interval={args.refresh_seconds:g}, {args.seconds:g} s per size")
    print("| nodes | ranks/node | writes req/s per node | write B/s per node | "
          "node 0 reads req/s per node | read B/s per node | total req/s per node | "
          "total B/s per node |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="card-traffic-") as root:
        for nodes in (int(n) for n in args.nodes.split(",")):
            print(measure(nodes, args.nproc, args.seconds, args.line_seconds,
                          args.refresh_seconds, Path(root) / str(nodes)), flush=True)


if __name__ == "__main__":
    main()
