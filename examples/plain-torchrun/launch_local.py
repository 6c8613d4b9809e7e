"""Run hello.py on several local "nodes" with `torchrun --rdzv-backend=metaflow`.

Each node is one torchrun process with the MF_PARALLEL_* variables that a
Metaflow @parallel step would set; node 0 hosts the rendezvous store. This is
what the backend does under Metaflow, without Metaflow:

    python launch_local.py --nodes 2 --nproc-per-node 2
"""
import argparse
import os
import subprocess
import sys
import uuid
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--nproc-per-node", type=int, default=2)
    args = parser.parse_args()
    script = Path(__file__).with_name("hello.py")
    command = [
        sys.executable, "-m", "rendezvous",  # = torchrun, with the metaflow backend registered
        f"--nnodes={args.nodes}",
        f"--nproc-per-node={args.nproc_per_node}",
        "--rdzv-backend=metaflow",
        f"--rdzv-id=demo-{uuid.uuid4().hex[:8]}",
        "--tee=3",
        str(script),
    ]
    nodes = []
    for index in range(args.nodes):
        env = dict(
            os.environ,
            MF_PARALLEL_NODE_INDEX=str(index),
            MF_PARALLEL_NUM_NODES=str(args.nodes),
            MF_PARALLEL_MAIN_IP="127.0.0.1",
            # torchrun prefixes each worker line with this when --tee is on
            TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE="[rank ${rank}]: ",
        )
        # What torchrun sets for the workers when unset, with a banner saying so:
        # one thread each, so that the processes do not each start one per core.
        env.setdefault("OMP_NUM_THREADS", "1")
        nodes.append(subprocess.Popen(command, env=env))
    codes = [node.wait() for node in nodes]
    print(f"node exit codes: {codes}")
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
