"""A flow whose @torchrun step comes from a base class in another module, two levels up."""
from metaflow import step
from training_base import TwoLevelTraining


class InheritedFlow(TwoLevelTraining):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)


if __name__ == "__main__":
    InheritedFlow()
