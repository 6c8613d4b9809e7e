"""A plain @parallel step that starts torchrun itself, with the metaflow rendezvous backend.

No @torchrun here: the step's own code builds the torchrun command line, which
shows that the backend works in any script that launches torchrun. Everything
runs with the interpreter running this file, also from a virtualenv that is not
activated (its bin not on PATH).

    python flow.py run
    python flow.py run --launcher module    # python -m rendezvous instead of torchrun
"""
import os
import subprocess
import sys
from importlib.metadata import entry_points
from typing import List

from metaflow import FlowSpec, Parameter, current, parallel, step

# Next to this file: Metaflow packages it with the flow for remote runs.
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allreduce.py")

# Metaflow's local @parallel launcher starts nodes 1..N-1 with the bare command
# `python`, looked up on PATH. Put this interpreter's folder first, where a
# virtualenv keeps its `python`, so that they run in this environment too.
_HERE = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _HERE:
    os.environ["PATH"] = os.pathsep.join([_HERE, os.environ.get("PATH", "")])


def torchrun_command(launcher: str) -> List[str]:
    """torchrun, or ``python -m rendezvous`` where torchrun cannot find the backend.

    torchrun is ``python -m torch.distributed.run``, with this interpreter: the
    ``torchrun`` script sits in the environment's bin folder, which need not be
    on PATH. Installing metaflow-torchrun registers the backend with torchrun
    through an entry point. Where the ``rendezvous`` package is only importable
    (a copy next to this file, which Metaflow's code package carries to remote
    nodes), ``python -m rendezvous`` is torchrun with the backend registered.
    """
    if launcher == "auto":
        installed = any(ep.name == "metaflow" for ep in entry_points(group="torchrun.handlers"))
        launcher = "torchrun" if installed else "module"
    commands = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run"],
        "module": [sys.executable, "-m", "rendezvous"],
    }
    if launcher not in commands:
        raise ValueError(f"--launcher {launcher!r}: give torchrun, module or auto")
    return commands[launcher]


class CustomScriptFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    launcher = Parameter("launcher", default="auto", help="torchrun, module (python -m rendezvous) or auto")

    @step
    def start(self):
        self.next(self.train, num_parallel=self.num_parallel)

    @parallel
    @step
    def train(self):
        import torch  # here, not at the top: the other steps need no torch

        command = torchrun_command(self.launcher) + [
            f"--nnodes={current.parallel.num_nodes}",
            f"--nproc-per-node={torch.cuda.device_count() or 1}",
            "--rdzv-backend=metaflow",
            # The same on every node of this step, different for every run: the
            # store port is derived from it, so concurrent jobs do not collide.
            f"--rdzv-id={current.run_id}-{current.parallel.control_task_id}",
            SCRIPT,
        ]
        print(f"node {current.parallel.node_index} runs: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CustomScriptFlow()
