"""A @torchrun flow with no compute decorator: the command line sends it to a cluster.

``run --with kubernetes`` or ``run --with batch`` runs every step remotely: start, join
and end as jobs of one pod, train as 2 nodes x 1 process (a JobSet, a multi-node
job) with a card. Run by tests/integration/test_remote_kubernetes.py and
test_remote_batch.py through the rehearsal's stand-ins.
"""
import sys

from metaflow import FlowSpec, card, current, step, torchrun


class RemotePlainFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @card
    # A node that never comes fails the run within the test's time, not after 600 s.
    @torchrun(all_nodes_started_timeout=120)
    @step
    def train(self):
        import rendezvous  # the package the code package carries: the pods do not install it

        self.node_index = current.parallel.node_index
        result = current.torch.run(entrypoint="workers/remote_worker.py", nproc_per_node=1)
        print(f"NODE {self.node_index} python={sys.executable} "
              f"rendezvous={rendezvous.__file__} exit_code={result.exit_code}")
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
    RemotePlainFlow()
