"""A flow class with a @kubernetes @torchrun step and no start: remote_inherited.py reaches it.

``@kubernetes(gpu=2)`` asks for two processes per node (``nproc_per_node`` follows
the GPUs asked for) and ``port=RENDEZVOUS_PORT`` for the port of node 0's store.
After the script, the pods run ``rank_on_host``, a function of this module, which
the workers import from the code package.
"""
import json
import os
import socket

from metaflow import FlowSpec, current, kubernetes, step, torchrun

# Outside 20000-31999, where the port derived from the rendezvous id lies.
RENDEZVOUS_PORT = 32123


def rank_on_host(offset):
    """A function entrypoint: what each rank returns names it and its pod."""
    return {"rank": int(os.environ["RANK"]) + offset, "host": socket.gethostname().split(".")[0]}


class RemoteTrainingBase(FlowSpec):
    @kubernetes(gpu=2, port=RENDEZVOUS_PORT)
    @torchrun
    @step
    def train(self):
        self.node_index = current.parallel.node_index
        current.torch.run(entrypoint="workers/remote_worker.py")
        result = current.torch.run(entrypoint=rank_on_host, entrypoint_args=[1000])
        self.returned, self.value = result.return_values, result.value
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(task.node_index for task in inputs)
        print(f"JOINED nodes={self.nodes}")
        for task in inputs:
            print(f"RETURNED node={task.node_index} value={json.dumps(task.value)} "
                  f"values={json.dumps(task.returned, sort_keys=True)}")
        self.next(self.end)

    @step
    def end(self):
        pass
