"""A worker fails once; torchrun restarts the workers on every node and the job succeeds.

    python flow.py run
    python flow.py run --fail_at_step -1      # no failure
"""
import os
import tempfile

from metaflow import FlowSpec, Parameter, current, step, torchrun


class RestartsFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    steps = Parameter("steps", default=10, help="steps of work")
    fail_at_step = Parameter("fail_at_step", default=5, help="the last rank fails here, the first time only")
    max_restarts = Parameter("max_restarts", default=1, help="restarts torchrun allows per node")

    @step
    def start(self):
        self.next(self.work, num_parallel=self.num_parallel)

    @torchrun
    @step
    def work(self):
        result = current.torch.run(
            entrypoint="work.py",
            entrypoint_args={
                "steps": self.steps,
                "fail-at-step": self.fail_at_step,
                # A directory of this node's: rank 0 keeps its checkpoint there
                # across restarts, as they happen within this one task.
                "checkpoint": os.path.join(tempfile.mkdtemp(), "checkpoint.pt"),
            },
            torchrun_args={"max_restarts": self.max_restarts},
        )
        # A node counts a restart when its own workers failed: the failing rank's
        # node, and often the others too, whose ranks lost a peer in a collective.
        # A node that only followed the others into the new round counts none.
        self.restarts = result.restarts
        self.node_index = current.parallel.node_index
        self.next(self.join)

    @step
    def join(self, inputs):
        self.restarts_by_node = {task.node_index: task.restarts for task in inputs}
        self.next(self.end)

    @step
    def end(self):
        print(f"the job succeeded; restarts by node: {dict(sorted(self.restarts_by_node.items()))}")


if __name__ == "__main__":
    RestartsFlow()
