"""Every kind of bad input to current.torch, each refused before anything starts."""
from metaflow import FlowSpec, current, step, torchrun

CASES = {
    "missing entrypoint": dict(entrypoint="no_such_script.py"),
    "entrypoint type": dict(entrypoint=42),
    "entrypoint and module": dict(entrypoint="workers/ranks.py", module="workers.ranks"),
    "neither entrypoint nor module": dict(),
    "missing module": dict(module="no_such_package.train"),
    "entrypoint_args type": dict(entrypoint="workers/ranks.py", entrypoint_args="--text x"),
    "torchrun_args type": dict(entrypoint="workers/ranks.py", torchrun_args="--max-restarts=1"),
    "nproc zero": dict(entrypoint="workers/ranks.py", nproc_per_node=0),
    "nproc text": dict(entrypoint="workers/ranks.py", nproc_per_node="two"),
    "nproc twice": dict(entrypoint="workers/ranks.py", nproc_per_node=2, torchrun_args={"nproc_per_node": 2}),
    "managed flag": dict(entrypoint="workers/ranks.py", torchrun_args={"rdzv_backend": "c10d"}),
    "managed flag in a list": dict(entrypoint="workers/ranks.py", torchrun_args=["--nnodes", "3"]),
    "list without dashes": dict(entrypoint="workers/ranks.py", torchrun_args=["max_restarts", "1"]),
}


class BadInputsFlow(FlowSpec):
    @step
    def start(self):
        print(f"HAS TORCH outside @torchrun: {hasattr(current, 'torch')}")
        try:
            current.torch.run(entrypoint="workers/ranks.py")
        except AttributeError as error:
            print(f"BAD outside @torchrun: {type(error).__name__}: {error}")
        self.next(self.train, num_parallel=1)

    @torchrun
    @step
    def train(self):
        for name, arguments in CASES.items():
            try:
                current.torch.run(**arguments)
            except Exception as error:
                print(f"BAD {name}: {type(error).__name__}: {error}")
            else:
                print(f"NOT REFUSED {name}")
        # Uncaught, the error ends the step with its message.
        current.torch.run(entrypoint="no_such_script.py")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BadInputsFlow()
