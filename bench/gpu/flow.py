"""The @torchrun flow of bench/gpu_check.py: one node, ``nproc_per_node`` left to its default.

The step asks ``@resources`` for GPU_CHECK_GPUS GPUs (what the machine has), so that
the default gives the node one worker per GPU; ``--mode`` is ranks.py's.
"""
import os

from metaflow import FlowSpec, Parameter, current, resources, step, torchrun

GPUS = int(os.environ.get("GPU_CHECK_GPUS", "0"))


class GpuCheckFlow(FlowSpec):
    mode = Parameter("mode", default="report", help="ranks.py's mode")

    @step
    def start(self):
        self.next(self.train, num_parallel=1)

    @resources(gpu=GPUS)
    @torchrun
    @step
    def train(self):
        result = current.torch.run(entrypoint="ranks.py", entrypoint_args=[self.mode])
        print(f"GPU CHECK RESULT exit_code={result.exit_code} wall_time={result.wall_time:.1f}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GpuCheckFlow()
