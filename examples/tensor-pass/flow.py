"""The main process (rank 0) passes a tensor to every other process; each checks what it got.

    python flow.py run
    python flow.py run --size 1000 --num_parallel 3
"""
from metaflow import FlowSpec, Parameter, current, step, torchrun


class TensorPassFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    nproc_per_node = Parameter("nproc_per_node", default=2, help="worker processes per node")
    size = Parameter("size", default=6, help="number of elements in the tensor")

    @step
    def start(self):
        self.next(self.pass_tensor, num_parallel=self.num_parallel)

    @torchrun
    @step
    def pass_tensor(self):
        current.torch.run(
            entrypoint="pass_tensor.py",
            entrypoint_args={"size": self.size},
            nproc_per_node=self.nproc_per_node,
        )
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TensorPassFlow()
