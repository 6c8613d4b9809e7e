"""Flows as the original metaflow-torchrun's README wrote them, unchanged.

``start`` runs one node with two processes through ``TorchrunSingleNodeMultiGPU``,
its arguments in the original's positional order (torchrun_args, entrypoint,
entrypoint_args, nproc_per_node), then by keyword; with ``--fail_rank`` that
rank raises in a last one-node job instead.
``train`` is the original's multi-node step: ``current.torch.run(entrypoint=...)``
and nothing else.
"""
from metaflow import FlowSpec, Parameter, TorchrunSingleNodeMultiGPU, current, step, torchrun


class OriginalPackageFlow(FlowSpec):
    fail_rank = Parameter("fail_rank", default=-1, help="this rank of the one-node job raises")

    @step
    def start(self):
        executor = TorchrunSingleNodeMultiGPU()
        result = executor.run(None, "workers/ranks.py", {"text": "positional"}, 2)
        print(f"SINGLE NODE exit_code={result.exit_code} log_dir={result.log_dir}")
        executor.run(entrypoint="workers/ranks.py", entrypoint_args=["--text", "keywords"],
                     nproc_per_node=2)
        if self.fail_rank >= 0:
            TorchrunSingleNodeMultiGPU().run(
                entrypoint="workers/raise_rank.py", entrypoint_args={"fail-rank": self.fail_rank},
                nproc_per_node=2,
            )
        self.next(self.train, num_parallel=2)

    @torchrun
    @step
    def train(self):
        current.torch.run(entrypoint="workers/ranks.py")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    OriginalPackageFlow()
