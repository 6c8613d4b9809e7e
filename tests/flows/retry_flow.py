"""@retry around a two-node @torchrun step whose program fails in the first attempt only."""
from metaflow import FlowSpec, current, retry, step, torchrun

from lines import say


class RetryFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @retry(times=1, minutes_between_retries=0)
    @torchrun(nproc_per_node=1)
    @step
    def train(self):
        result = current.torch.run(
            entrypoint="workers/fail_in_attempt.py",
            entrypoint_args={"attempt": current.retry_count, "fail-attempt": 0},
        )
        say(f"RESULT node={current.parallel.node_index} attempt={current.retry_count} log_dir={result.log_dir}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryFlow()
