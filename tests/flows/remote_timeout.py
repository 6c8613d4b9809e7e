"""Two nodes x one process on Kubernetes whose ranks idle past the step's @timeout."""
import time

from metaflow import FlowSpec, current, kubernetes, step, timeout, torchrun

# The step's @timeout: the whole job must stop within it and 15 s more (Metaflow refuses
# less than 60 s on Kubernetes).
TIMEOUT_SECONDS = 60


class RemoteTimeoutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @timeout(seconds=TIMEOUT_SECONDS)
    @kubernetes
    @torchrun
    @step
    def train(self):
        print(f"STEP STARTED at={time.time():.3f}", flush=True)
        current.torch.run(entrypoint="workers/raise_rank.py",
                          entrypoint_args={"fail-rank": -1, "idle-seconds": 600})
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteTimeoutFlow()
