"""A flow class with a @kubernetes @torchrun step and no start: remote_inherited.py reaches it.

``@kubernetes(gpu=2)`` asks for two processes per node (``nproc_per_node`` follows
the GPUs asked for) and ``port=RENDEZVOUS_PORT`` for the port of node 0's store.
"""
from metaflow import FlowSpec, current, kubernetes, step, torchrun

# Outside 20000-31999, where the port derived from the rendezvous id lies.
RENDEZVOUS_PORT = 32123


class RemoteTrainingBase(FlowSpec):
    @kubernetes(gpu=2, port=RENDEZVOUS_PORT)
    @torchrun
    @step
    def train(self):
        self.node_index = current.parallel.node_index
        current.torch.run(entrypoint="workers/remote_worker.py")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(task.node_index for task in inputs)
        print(f"JOINED nodes={self.nodes}")
        self.next(self.end)

    @step
    def end(self):
        pass
