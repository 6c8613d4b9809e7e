"""The @kubernetes @torchrun step comes from a base class in another module (remote_base.py)."""
from metaflow import step
from remote_base import RemoteTrainingBase


class RemoteInheritedFlow(RemoteTrainingBase):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)


if __name__ == "__main__":
    RemoteInheritedFlow()
