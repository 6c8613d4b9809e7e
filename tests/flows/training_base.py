"""Flow classes that define a @torchrun step but no start: flows in other modules inherit them.

``TorchTraining`` holds the @torchrun step, ``TwoLevelTraining`` adds a level of
inheritance; neither reaches the step with num_parallel, their subclasses do.
"""
from metaflow import FlowSpec, current, step, torchrun

from lines import say


class TorchTraining(FlowSpec):
    @torchrun
    @step
    def train(self):
        result = current.torch.run(entrypoint="workers/ranks.py", nproc_per_node=1,
                                   entrypoint_args={"text": type(self).__name__})
        self.node_index = current.parallel.node_index
        say(f"RESULT node={self.node_index} exit_code={result.exit_code}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(task.node_index for task in inputs)
        print(f"JOINED nodes={self.nodes}")
        self.next(self.end)

    @step
    def end(self):
        pass


class TwoLevelTraining(TorchTraining):
    """One more level between the step's class and the flow."""
