"""The ``@torchrun`` step decorator: Metaflow's ``@parallel`` plus ``current.torch``.

Metaflow imports this module on every ``import metaflow``: it imports neither
torch nor the launcher at module level, and not our exceptions either, which
import metaflow themselves (importing them first must not make a cycle).
"""

import ast
import functools
import inspect
import math
import os
import signal
import textwrap
from typing import Iterator, List, Optional, Tuple

from metaflow.metaflow_current import Current, current
from metaflow.plugins.parallel_decorator import ParallelDecorator
from metaflow.unbounded_foreach import UBF_CONTROL, UBF_TASK


class TorchrunDecorator(ParallelDecorator):
    """
    Run an unchanged torchrun program on every node of this step.

    With ``self.next(self.train, num_parallel=N)`` the step runs on N nodes
    (a Metaflow ``@parallel`` step); without ``num_parallel`` it runs on one.
    Inside the step, ``current.torch.run(entrypoint="train.py")`` starts the
    program with torchrun on this node; the nodes find each other through the
    ``metaflow`` rendezvous backend.

    Parameters
    ----------
    nproc_per_node : int or str, optional, default None
        Worker processes per node, or "auto" (one per GPU, else one per CPU).
        By default, the GPUs requested with @resources, @kubernetes or @batch,
        else 1. An argument of `current.torch.run` overrides it.
    master_port : int, optional, default None
        Port of the rendezvous store on node 0, which the workers also use as
        MASTER_PORT. By default each `current.torch.run` call derives its own.
    all_nodes_started_timeout : int, default 600
        Seconds to wait for every node to join before failing with the list of
        nodes that did not.

    MF Add To Current
    -----------------
    torch -> metaflow_extensions.torchrun.plugins.launcher.TorchrunLauncher
        Starts this node's share of a torchrun job. Use
        `current.torch.run(entrypoint="train.py", entrypoint_args={"epochs": 3})`
        on every node; it returns a `TorchrunResult` or raises `TorchrunFailed`.

        @@ Returns
        -------
        TorchrunLauncher
            The launcher of this task; see its `run` method.
    """

    name = "torchrun"
    defaults = {
        "nproc_per_node": None,
        "master_port": None,
        "all_nodes_started_timeout": 600,
    }
    # Set by the local launcher of the other nodes, on node 0 of a local run only.
    _local_nodes = None

    @property
    def IS_PARALLEL(self) -> bool:  # noqa: N802 (Metaflow's name)
        # Metaflow reads this while it builds the graph, before any hook of ours
        # runs, to decide whether the step is @parallel. A @torchrun step that no
        # step reaches with num_parallel is an ordinary one-node step.
        return _reached_with_num_parallel(self)

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        super().step_init(flow, graph, step_name, decorators, environment, flow_datastore, logger)
        from .launcher import StepSettings

        # Every task of the flow initializes every step's decorators: from here
        # on, current.torch explains itself in the steps without @torchrun. The
        # launcher replaces it (current._update_env) in the steps with it.
        if "torch" not in vars(Current):
            Current.torch = property(_current_torch_outside_torchrun)

        self._single_node = not graph[step_name].parallel_step
        self._flow_dir = os.path.dirname(os.path.abspath(inspect.getfile(type(flow))))
        self._settings = StepSettings(
            nproc_per_node=_checked_nproc(self.attributes["nproc_per_node"]),
            master_port=_checked_port(self.attributes["master_port"]),
            join_timeout=_checked_timeout(self.attributes["all_nodes_started_timeout"]),
            requested_gpus=_requested_gpus(decorators),
        )

    def task_pre_step(
        self,
        step_name,
        task_datastore,
        metadata,
        run_id,
        task_id,
        flow,
        graph,
        retry_count,
        max_user_code_retries,
        ubf_context,
        inputs,
    ):
        # A one-node step is not inside a num_parallel split: the parent's hook
        # would read the split's iterator, which does not exist there.
        if not self._single_node:
            super().task_pre_step(
                step_name,
                task_datastore,
                metadata,
                run_id,
                task_id,
                flow,
                graph,
                retry_count,
                max_user_code_retries,
                ubf_context,
                inputs,
            )
        from .launcher import TaskIdentity

        self._task = TaskIdentity(flow.name, str(run_id), step_name, str(task_id), int(retry_count))

    def task_decorate(self, step_func, flow, graph, retry_count, max_user_code_retries, ubf_context):
        is_local = os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT", "local") == "local"
        if is_local:
            from .worker_bootstrap import die_with_parent

            # Metaflow's local runtime signals none of its tasks when it is
            # terminated itself (`kill PID` of `python flow.py run` leaves them
            # all running). Tied to it, this task goes with it, and with the
            # task go its torchrun agent, the agent's workers and, on node 0,
            # the other nodes' tasks, each tied to its own parent.
            die_with_parent(signal.SIGTERM)
        if ubf_context != UBF_CONTROL or not is_local:
            return super().task_decorate(
                step_func, flow, graph, retry_count, max_user_code_retries, ubf_context
            )
        from .local_nodes import run_control_task

        # Node 0 of a local run: the parent's step function for a single node,
        # run under our launcher of the other nodes instead of Metaflow's.
        node_step = super().task_decorate(
            step_func, flow, graph, retry_count, max_user_code_retries, UBF_TASK
        )
        return functools.partial(
            run_control_task,
            flow,
            node_step,
            retry_count,
            ",".join(self.input_paths),
            self._watch_local_nodes,
        )

    def _watch_local_nodes(self, local_nodes) -> None:
        self._local_nodes = local_nodes

    def setup_distributed_env(self, flow) -> None:
        from .launcher import TorchrunLauncher

        if self._single_node:
            os.environ.update(
                MF_PARALLEL_NUM_NODES="1",
                MF_PARALLEL_NODE_INDEX="0",
                MF_PARALLEL_MAIN_IP="127.0.0.1",
                MF_PARALLEL_CONTROL_TASK_ID=self._task.task_id,
            )
        local_nodes = self._local_nodes
        current._update_env(
            {
                "torch": TorchrunLauncher(
                    self._task,
                    self._flow_dir,
                    self._settings,
                    peer_failure=local_nodes.failure if local_nodes else lambda: None,
                )
            }
        )

    def add_to_package(self):
        # Remote nodes run `python -m rendezvous`, and a code package carries
        # Metaflow extensions but not their entry points or other top-level
        # packages. The files go next to `metaflow` in the package, which is on
        # sys.path there. (MODULE_CONTENT cannot ship a regular package in
        # Metaflow 2.19: it takes the package's __init__.py for the package.)
        import rendezvous
        from metaflow.packaging_sys import ContentType

        root = os.path.dirname(os.path.abspath(rendezvous.__file__))
        for name in sorted(os.listdir(root)):
            if name.endswith(".py"):
                yield os.path.join(root, name), f"rendezvous/{name}", ContentType.CODE_CONTENT


def _current_torch_outside_torchrun(_: Current):
    from .exceptions import TorchrunNotEnabled

    raise TorchrunNotEnabled(
        "current.torch exists only in steps decorated with @torchrun: add @torchrun above "
        "@step (and call the step with self.next(..., num_parallel=N) for N nodes)."
    )



def _checked_nproc(value: object) -> Optional[str]:
    if value is None:
        return None
    from .command import check_nproc_per_node

    return check_nproc_per_node(value, "@torchrun(nproc_per_node)")


def _checked_port(value: object) -> Optional[int]:
    if value is None:
        return None
    from .command import whole_number
    from .exceptions import TorchrunArgumentError

    port = None if isinstance(value, bool) else whole_number(str(value))
    if port is None or not 1 <= port <= 65535:
        raise TorchrunArgumentError(
            f"@torchrun(master_port={value!r}): give a TCP port from 1 to 65535, or leave it "
            f"out to let each current.torch.run call pick its own."
        )
    return port


def _checked_timeout(value: object) -> float:
    from .exceptions import TorchrunArgumentError

    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise TorchrunArgumentError(
            f"@torchrun(all_nodes_started_timeout={value!r}): give the number of seconds to "
            f"wait for every node to join, a positive number (default 600)."
        )
    return seconds


def _requested_gpus(decorators) -> int:
    """GPUs per node requested through @resources, @kubernetes or @batch (0 if none)."""
    compute = [deco for deco in decorators if deco.name in ("kubernetes", "batch")]
    if compute:
        from metaflow.plugins.aws.aws_utils import compute_resource_attributes

        gpu = compute_resource_attributes(decorators, compute[0], {"gpu": "0"}).get("gpu")
    else:
        gpu = next(
            (deco.attributes.get("gpu") for deco in decorators if deco.name == "resources"), None
        )
    try:
        return max(0, int(float(gpu or 0)))
    except (TypeError, ValueError):
        return 0


def _flow_classes(base: type) -> Iterator[type]:
    for subclass in base.__subclasses__():
        yield subclass
        yield from _flow_classes(subclass)


def _steps_of(flow_class: type) -> List[Tuple[str, object]]:
    steps = []
    for name in dir(flow_class):
        member = getattr(flow_class, name, None)
        if callable(member) and hasattr(member, "is_step"):
            steps.append((name, member))
    return steps


def _reached_with_num_parallel(decorator: TorchrunDecorator) -> bool:
    """Whether a step calls ``self.next(self.<this step>, num_parallel=...)``.

    Finds the flow class and step that carry ``decorator`` among the loaded
    FlowSpec classes and reads the steps' source, as Metaflow's graph does.
    True when the decorator is attached to no known step yet.
    """
    from metaflow import FlowSpec

    for flow_class in _flow_classes(FlowSpec):
        steps = _steps_of(flow_class)
        for step_name, step_func in steps:
            if any(deco is decorator for deco in getattr(step_func, "decorators", ())):
                return any(_calls_with_num_parallel(func, step_name) for _, func in steps)
    return True


def _calls_with_num_parallel(step_func, target: str) -> bool:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(step_func)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "next"
            and any(keyword.arg == "num_parallel" for keyword in node.keywords)
            and any(isinstance(arg, ast.Attribute) and arg.attr == target for arg in node.args)
        ):
            return True
    return False
