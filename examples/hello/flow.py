"""Hello, torchrun: every process of a 2-node job prints its rank and the world size.

    python flow.py run                                  # 2 nodes x 2 processes
    python flow.py run --num_parallel 3 --nproc_per_node 1
"""
from metaflow import FlowSpec, Parameter, current, step, torchrun


class HelloFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    nproc_per_node = Parameter("nproc_per_node", default=2, help="worker processes per node")

    @step
    def start(self):
        self.next(self.hello, num_parallel=self.num_parallel)

    @torchrun
    @step
    def hello(self):
        # The same call on every node; the nodes find each other by themselves.
        current.torch.run(entrypoint="hello.py", nproc_per_node=self.nproc_per_node)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        print("all nodes said hello")


if __name__ == "__main__":
    HelloFlow()
