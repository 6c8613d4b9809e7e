"""Two nodes x two processes running ``no_destroy.py`` through ``current.torch.run``."""
from metaflow import FlowSpec, current, step, torchrun


class ExitAbortsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun(nproc_per_node=2)
    @step
    def train(self):
        current.torch.run(entrypoint="no_destroy.py")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ExitAbortsFlow()
