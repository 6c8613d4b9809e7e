"""@timeout around a two-node @torchrun step whose ranks idle: the whole job stops."""
from metaflow import FlowSpec, current, step, timeout, torchrun

# The step's timeout: the test checks the job stops within it and 15 s more.
TIMEOUT_SECONDS = 10


class TimedOutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @timeout(seconds=TIMEOUT_SECONDS)
    @torchrun(nproc_per_node=2)
    @step
    def train(self):
        current.torch.run(entrypoint="workers/raise_rank.py", entrypoint_args={"fail-rank": -1})
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TimedOutFlow()
