"""A plain @parallel step that starts torchrun itself, with the metaflow rendezvous backend.

No @torchrun here: the step's own code builds the torchrun command line, which
shows that the backend works in any script that launches torchrun.

    python flow.py run
    python flow.py run --launcher module    # as on a remote node without the entry point
"""
import os
import subprocess
import sys
from importlib.metadata import entry_points
from typing import List

import torch
from metaflow import FlowSpec, Parameter, current, parallel, step

# Next to this file: Metaflow packages it with the flow for remote runs.
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allreduce.py")

def torchrun_command(launcher: str) -> List[str]:
    """``torchrun``, or ``python -m rendezvous`` where torchrun cannot find the backend.

    Installing metaflow-torchrun registers the backend with torchrun through an
    entry point. A remote node gets the package inside Metaflow's code package,
    without the entry point; ``python -m rendezvous`` is torchrun with the
    backend registered.
    """
    if launcher == "auto":
        installed = any(ep.name == "metaflow" for ep in entry_points(group="torchrun.handlers"))
        launcher = "torchrun" if installed else "module"
    return ["torchrun"] if launcher == "torchrun" else [sys.executable, "-m", "rendezvous"]


class CustomScriptFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    launcher = Parameter("launcher", default="auto", help="torchrun, module (python -m rendezvous) or auto")

    @step
    def start(self):
        self.next(self.train, num_parallel=self.num_parallel)

    @parallel
    @step
    def train(self):
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
