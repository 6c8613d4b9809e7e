"""Two pods x one process on Kubernetes, with a live card; a rank may be told to raise
(``--fail_rank``), and the ranks may be told to wait for a file (``--release_file``)."""
import sys

from metaflow import FlowSpec, Parameter, card, current, kubernetes, step, torchrun


class RemoteTrainingFlow(FlowSpec):
    fail_rank = Parameter("fail_rank", default=-1, help="this global rank raises")
    release_file = Parameter("release_file", default="",
                             help="the ranks wait for this file before their all_reduce")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @card(refresh_interval=1)
    @kubernetes
    @torchrun
    @step
    def train(self):
        import rendezvous  # the package the code package carries: the pods do not install it

        self.node_index = current.parallel.node_index
        print(f"NODE {self.node_index} python={sys.executable} rendezvous={rendezvous.__file__}")
        current.torch.run(entrypoint="workers/remote_worker.py",
                          entrypoint_args={"fail-rank": self.fail_rank,
                                           "release-file": self.release_file})
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(task.node_index for task in inputs)
        print(f"JOINED nodes={self.nodes}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteTrainingFlow()
