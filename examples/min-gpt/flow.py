"""Train a small GPT with DDP on the text in input.txt, shipped next to this file.

    python flow.py run                               # tiny model, CPU, 150 steps
    python flow.py run --preset gpu --steps 5000 --with kubernetes:gpu=4
"""
from metaflow import FlowSpec, Parameter, current, step, torchrun


class MinGPTFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    preset = Parameter("preset", default="cpu", help="model size: cpu (tiny) or gpu (about 10M parameters)")
    steps = Parameter("steps", default=150, help="optimizer steps")
    eval_every = Parameter("eval_every", default=50, help="steps between validation losses")

    @step
    def start(self):
        self.next(self.train, num_parallel=self.num_parallel)

    @torchrun
    @step
    def train(self):
        # One process per GPU requested (@kubernetes(gpu=...) or --with), else one per node.
        current.torch.run(
            entrypoint="train.py",
            entrypoint_args={"preset": self.preset, "steps": self.steps, "eval-every": self.eval_every},
        )
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MinGPTFlow()
