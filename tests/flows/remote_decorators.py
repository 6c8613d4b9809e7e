"""Two pods x one process with @retry: rank 1 raises in attempt 0 only; attempt 1 succeeds
on every node, with a new rendezvous."""
from metaflow import FlowSpec, current, kubernetes, retry, step, torchrun


class RemoteDecoratorsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @retry(times=1, minutes_between_retries=0)
    @kubernetes
    @torchrun
    @step
    def train(self):
        self.node_index = current.parallel.node_index
        result = current.torch.run(entrypoint="workers/fail_in_attempt.py",
                                   entrypoint_args={"attempt": current.retry_count,
                                                    "fail-attempt": 0})
        print(f"RESULT node={self.node_index} attempt={current.retry_count} "
              f"log_dir={result.log_dir}")
        self.next(self.join)

    @step
    def join(self, inputs):
        print(f"JOINED nodes={sorted(task.node_index for task in inputs)}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteDecoratorsFlow()
