"""Function entrypoints on 2 nodes x 2 processes: values, arguments, failures, a restart.

One step makes several ``current.torch.run`` calls in turn; each node prints what it
got back as ``GOT <case> <json>`` for the test to read.
"""
import json
import os
import threading

from metaflow import FlowSpec, current, step, torchrun

import rank_functions


def all_reduce_rank(label, *, scale):
    """A real collective, keyword arguments, and a value that differs per rank."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(total)
    return {"rank": dist.get_rank(), "sum": total.item() * scale, "label": label,
            "master": os.environ["MASTER_ADDR"] != ""}


def fail_first_attempt():
    """In the first attempt rank 3 fails and rank 2 returns at once, so that a value of an
    attempt that failed exists; ranks 0 and 1 wait for them in a barrier and fail with
    them. Every rank says which attempt returned."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    if attempt == 0 and dist.get_rank() == 3:
        raise RuntimeError("rank 3 fails the first attempt")
    if attempt > 0 or dist.get_rank() != 2:
        dist.barrier()
    return {"rank": dist.get_rank(), "attempt": attempt}


def raise_on_rank_three():
    import time

    if os.environ["RANK"] == "3":
        raise ValueError("bad value on rank 3")
    time.sleep(600)  # the others are stopped, never finish


def return_unpicklable():
    return threading.Lock() if os.environ["RANK"] == "2" else "fine"


def show(case, value):
    print(f"GOT {case} {json.dumps(value, ensure_ascii=False, sort_keys=True)}")


class FunctionEntrypointsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun
    @step
    def train(self):
        from metaflow import TorchrunFailed
        from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError

        node = current.parallel.node_index
        result = current.torch.run(entrypoint=all_reduce_rank, nproc_per_node=2,
                                   entrypoint_args={"label": "héllo wörld ✓", "scale": 10})
        show("keyword", {"node": node, "value": result.value,
                         "values": {str(k): v for k, v in result.return_values.items()}})
        self.final_value = result.value

        result = current.torch.run(rank_functions.describe_rank, [100, "ünïcode"], 2)
        show("positional", {"node": node, "values": result.return_values})

        result = current.torch.run(entrypoint=fail_first_attempt, nproc_per_node=2,
                                   torchrun_args={"max_restarts": 1})
        show("restart", {"node": node, "restarts": result.restarts,
                         "values": result.return_values})

        for case, function in (("raises", raise_on_rank_three),
                               ("unpicklable", return_unpicklable)):
            try:
                current.torch.run(entrypoint=function, nproc_per_node=2)
                show(case, "NOT FAILED")
            except TorchrunFailed as failure:
                show(case, {"node": node, "summary": failure.summary,
                            "traceback": failure.traceback_tail,
                            "record": {name: getattr(failure, name) for name in (
                                "kind", "node_index", "rank", "local_rank", "exit_code",
                                "signal", "reason")}})

        refused = {}
        for case, kwargs in (
            ("lambda", {"entrypoint": lambda: 1}),
            ("bound method", {"entrypoint": self.join}),
            ("cloud output", {"entrypoint": all_reduce_rank, "push_results_dir_to_cloud": True}),
            ("local output", {"entrypoint": "workers/ranks.py", "local_output_dir": "out"}),
        ):
            try:
                current.torch.run(**kwargs)
                refused[case] = "NOT REFUSED"
            except TorchrunArgumentError as error:
                refused[case] = str(error)
        show("refused", refused)
        self.next(self.join)

    @step
    def join(self, inputs):
        show("artifacts", sorted((task.final_value or {}).get("sum", -1) for task in inputs))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FunctionEntrypointsFlow()
