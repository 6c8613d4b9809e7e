"""A @torchrun step on AWS Batch, with a card: 2 nodes of one multi-node job run an all_reduce.

Run by tests/integration/test_remote_batch.py through the rehearsal's Batch stand-in.
"""
from metaflow import FlowSpec, batch, card, current, step, torchrun


class RemoteBatchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @card
    @batch(cpu=1, memory=2048)
    # A node that never comes fails the run within the test's time, not after 600 s.
    @torchrun(all_nodes_started_timeout=120)
    @step
    def train(self):
        import rendezvous

        result = current.torch.run(entrypoint="workers/remote_batch_worker.py", nproc_per_node=1)
        self.node_index = current.parallel.node_index
        self.rendezvous_file = rendezvous.__file__
        print(f"NODE {self.node_index} exit_code={result.exit_code} "
              f"rendezvous={self.rendezvous_file}")
        self.next(self.join)

    @step
    def join(self, inputs):
        print("JOIN nodes=%s" % sorted(inp.node_index for inp in inputs))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteBatchFlow()
