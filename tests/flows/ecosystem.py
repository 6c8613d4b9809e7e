"""Scripts written for the ecosystem's launch-aware libraries, run unchanged on 2 nodes x 2.

One @torchrun step runs each script of ecosystem_scripts/ named by ``--scripts``,
one ``current.torch.run`` after another, so the flow's start-up is paid once for
all of them. Each script prints its own result lines (see
ecosystem_scripts/synthetic_data.py); the step adds a RESULT line per call.
"""
import os
import tempfile

from metaflow import FlowSpec, Parameter, current, step, torchrun

from lines import say

NODES = 2
PROCESSES_PER_NODE = 2
SCRIPTS = "fabric_ddp.py,lightning_trainer.py,accelerate_script.py,ddp_tutorial_multinode.py"


def command_line(script: str) -> list:
    """The arguments a user would give ``script`` for this job."""
    if script in ("fabric_ddp.py", "lightning_trainer.py"):
        # Lightning checks that devices x num_nodes is torchrun's world size.
        return ["--devices", str(PROCESSES_PER_NODE), "--num-nodes", str(current.parallel.num_nodes)]
    if script == "ddp_tutorial_multinode.py":
        # total_epochs save_every, as in the tutorial; a fresh snapshot file per node
        return ["1", "1", "--snapshot_path", os.path.join(tempfile.mkdtemp(), "snapshot.pt")]
    return []


class EcosystemFlow(FlowSpec):
    scripts = Parameter("scripts", default=SCRIPTS, help="comma-separated scripts of ecosystem_scripts/")

    @step
    def start(self):
        self.next(self.train, num_parallel=NODES)

    @torchrun(nproc_per_node=PROCESSES_PER_NODE)
    @step
    def train(self):
        for script in self.scripts.split(","):
            result = current.torch.run(
                entrypoint=os.path.join("ecosystem_scripts", script), entrypoint_args=command_line(script)
            )
            say(f"RESULT script={script} node={current.parallel.node_index} wall_time={result.wall_time:.2f}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EcosystemFlow()
