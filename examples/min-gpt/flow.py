"""Train a small GPT with DDP on a text file: by default input.txt, shipped next to this file.

    python flow.py run                               # tiny model, CPU, 150 steps
    python flow.py run --preset gpu --steps 5000 --text book.txt --with kubernetes:gpu=4
"""
import os
import tempfile

from metaflow import FlowSpec, IncludeFile, Parameter, current, step, torchrun


class MinGPTFlow(FlowSpec):
    # Read where the run starts and stored with the run, so remote nodes get it too.
    text = IncludeFile(
        "text",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "input.txt"),
        is_text=True,
        encoding="utf-8",
        help="training text",
    )
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    preset = Parameter("preset", default="cpu", help="model size: cpu (tiny) or gpu (about 11M parameters)")
    steps = Parameter("steps", default=150, help="optimizer steps")
    eval_every = Parameter("eval_every", default=50, help="steps between validation losses")

    @step
    def start(self):
        self.next(self.train, num_parallel=self.num_parallel)

    @torchrun
    @step
    def train(self):
        text_path = os.path.join(tempfile.mkdtemp(), "text.txt")
        with open(text_path, "w", encoding="utf-8") as file:
            file.write(self.text)
        # One process per GPU requested (@kubernetes(gpu=...) or --with), else one per node.
        current.torch.run(
            entrypoint="train.py",
            entrypoint_args={
                "text": text_path,
                "preset": self.preset,
                "steps": self.steps,
                "eval-every": self.eval_every,
            },
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
