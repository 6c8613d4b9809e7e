"""One @torchrun step reached with num_parallel=1: it runs on one node.

TORCHRUN_TEST_ATTRIBUTES (JSON) gives the decorator's attributes, so that a test
can also try attributes that must be refused.
"""
import json
import os

from metaflow import FlowSpec, Parameter, current, step, torchrun

ATTRIBUTES = json.loads(os.environ.get("TORCHRUN_TEST_ATTRIBUTES", '{"nproc_per_node": 2}'))


class SingleNodeFlow(FlowSpec):
    module = Parameter("module", default="workers.ranks", help="run like python -m MODULE")

    @step
    def start(self):
        self.next(self.train, num_parallel=1)

    @torchrun(**ATTRIBUTES)
    @step
    def train(self):
        result = current.torch.run(module=self.module, entrypoint_args=["--text", "one node"])
        print(f"RESULT exit_code={result.exit_code} restarts={result.restarts} parallel={tuple(current.parallel)}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SingleNodeFlow()
