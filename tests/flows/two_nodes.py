"""Two nodes, one @torchrun step; the test chooses the program and arguments."""
import json
import sys
import time

from metaflow import FlowSpec, Parameter, current, step, torchrun

from lines import say


class TwoNodesFlow(FlowSpec):
    script = Parameter("script", default="workers/ranks.py")
    script_args = Parameter("script_args", default="{}", help="JSON: entrypoint_args")
    torchrun_args = Parameter("torchrun_args", default="{}", help="JSON: torchrun_args")
    nproc = Parameter("nproc", default=2)
    calls = Parameter("calls", default=1)
    broken_node = Parameter("broken_node", default=-1, help="this node raises instead of running")
    sleeping_node = Parameter("sleeping_node", default=-1, help="this node sleeps instead of running")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun
    @step
    def train(self):
        node = current.parallel.node_index
        if node == self.broken_node:
            raise RuntimeError(f"node {node} broke before calling torchrun")
        if node == self.sleeping_node:
            time.sleep(600)
        for call in range(1, self.calls + 1):
            result = current.torch.run(
                entrypoint=self.script,
                entrypoint_args=json.loads(self.script_args),
                nproc_per_node=self.nproc,
                torchrun_args=json.loads(self.torchrun_args),
            )
            say(
                f"RESULT node={node} call={call} exit_code={result.exit_code} "
                f"restarts={result.restarts} wall_time={result.wall_time:.3f} "
                f"log_dir={result.log_dir}"
            )
            say(f"RUN RETURNED node={node} call={call}", sys.stderr)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TwoNodesFlow()
