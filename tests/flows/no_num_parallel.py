"""A @torchrun step reached without num_parallel, as a one-node step would be: Metaflow refuses it."""
from metaflow import FlowSpec, current, step, torchrun


class NoNumParallelFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @torchrun
    @step
    def train(self):
        current.torch.run(entrypoint="workers/ranks.py")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NoNumParallelFlow()
