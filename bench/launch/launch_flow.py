"""Two nodes that time, in turns, current.torch.run and a bare static-backend torchrun.

Each repetition runs the same trivial program twice on both nodes: once with
``current.torch.run`` and once with ``python -m torch.distributed.run
--rdzv-backend=static`` (what a user would call by hand), in alternating order.
Every node prints one SAMPLE line per launch with the seconds it took there.
"""
import os
import subprocess
import sys
import time

from metaflow import FlowSpec, Parameter, current, step, torchrun

HERE = os.path.dirname(os.path.abspath(__file__))


def bare_static_torchrun(node: int, repetition: int) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=static",
            f"--node-rank={node}", "--master-addr=127.0.0.1",
            f"--master-port={int(os.environ['BENCH_BASE_PORT']) + repetition}",
            os.path.join(HERE, "trivial.py"),
        ],
        check=True,
    )


class LaunchOverheadFlow(FlowSpec):
    repeats = Parameter("repeats", default=5)

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun(nproc_per_node=1)
    @step
    def train(self):
        node = current.parallel.node_index
        launchers = {
            "current.torch.run": lambda repetition: current.torch.run(entrypoint="trivial.py"),
            "bare torchrun static": lambda repetition: bare_static_torchrun(node, repetition),
        }
        for repetition in range(self.repeats):
            order = list(launchers) if repetition % 2 == 0 else list(launchers)[::-1]
            for name in order:
                started = time.monotonic()
                launchers[name](repetition)
                print(f"SAMPLE node={node} launcher={name} seconds={time.monotonic() - started:.4f}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LaunchOverheadFlow()
