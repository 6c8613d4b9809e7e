"""@catch around a two-node @torchrun step whose rank --fail_rank raises: the run goes on."""
from metaflow import FlowSpec, Parameter, catch, current, step, torchrun


class CaughtFlow(FlowSpec):
    fail_rank = Parameter("fail_rank", default=3)

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @catch(var="failure")
    @torchrun(nproc_per_node=2)
    @step
    def train(self):
        self.node = current.parallel.node_index
        current.torch.run(entrypoint="workers/raise_rank.py",
                          entrypoint_args={"fail-rank": self.fail_rank})
        self.next(self.join)

    @step
    def join(self, inputs):
        for task in sorted(inputs, key=lambda task: task.node):
            print(f"CAUGHT node={task.node} type={task.failure.type} "
                  f"error={str(task.failure.exception).splitlines()[0]}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaughtFlow()
