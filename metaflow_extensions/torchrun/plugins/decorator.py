"""The ``@torchrun`` step decorator: Metaflow's ``@parallel`` plus ``current.torch``.

Metaflow imports this module on every ``import metaflow``: it imports neither
torch nor the launcher at module level, and not our exceptions or anything
that imports them either, since they import metaflow themselves (importing
them first must not make a cycle). Each hook imports what it uses.
"""

import functools
import inspect
import os
import signal
from typing import TYPE_CHECKING, Optional

from metaflow.plugins.parallel_decorator import ParallelDecorator
from metaflow.unbounded_foreach import UBF_CONTROL

from .worker.bootstrap import die_with_parent

if TYPE_CHECKING:
    from .launch.local_nodes import LocalNodes


class TorchrunDecorator(ParallelDecorator):
    """
    Run an unchanged torchrun program on every node of this step.

    A ``@torchrun`` step is a Metaflow ``@parallel`` step: reach it with
    ``self.next(self.train, num_parallel=N)`` and it runs on N nodes (N=1 for
    one). Metaflow's graph decides this, so a step inherited from a base flow
    class works like one defined in the flow itself. Inside the step,
    ``current.torch.run(entrypoint="train.py")`` starts the program with
    torchrun on this node; the nodes find each other through the ``metaflow``
    rendezvous backend.

    Parameters
    ----------
    nproc_per_node : int or str, optional, default None
        Worker processes per node, or "auto" (one per GPU, else one per CPU).
        By default, the GPUs requested with @resources, @kubernetes or @batch,
        else 1. An argument of `current.torch.run` overrides it.
    master_port : int, optional, default None
        Port of the rendezvous store on node 0, which the workers also use as
        MASTER_PORT. By default the port of `@kubernetes(port=...)` if given,
        else each `current.torch.run` call derives its own.
    all_nodes_started_timeout : int, default 600
        Seconds to wait for every node to join before failing with the list of
        nodes that did not.
    hang_timeout : int, optional, default None
        Seconds a rank may wait in one collective before the job counts as
        hung: every node then logs which ranks hold the others up and where
        they are (file:line), and the card shows it. None keeps the backend's
        default (300); 0 turns hang diagnosis off.
    hang_fail_after : int, optional, default None
        Fail the job once it has been reported hung for this many seconds, so
        that @retry can take over; by default a hang is only reported (a long
        wait at a barrier looks the same).

    MF Add To Current
    -----------------
    torch -> metaflow_extensions.torchrun.plugins.launch.launcher.TorchrunLauncher
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
        "hang_timeout": None,
        "hang_fail_after": None,
    }

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        super().step_init(flow, graph, step_name, decorators, environment, flow_datastore, logger)
        from .launch.program import check_step_names
        from .launch.settings import StepSettings
        from .metaflow_compat import (
            default_current_property,
            keep_every_node_when_caught,
            show_every_line,
        )

        # Every task of the flow initializes every step's decorators: from here
        # on, current.torch explains itself in the steps without @torchrun. The
        # launcher replaces it in the steps with it.
        default_current_property("torch", _current_torch_outside_torchrun)
        # A rank's last lines before it goes quiet must reach the console of a local run.
        show_every_line(step_name)
        # With @catch, every node's task (and the failure it caught) reaches the join.
        keep_every_node_when_caught(decorators)
        self._caught = any(deco.name == "catch" for deco in decorators)

        check_step_names(getattr(type(flow), step_name), step_name)
        self._flow_dir = os.path.dirname(os.path.abspath(inspect.getfile(type(flow))))
        self._settings = StepSettings.from_attributes(self.attributes, decorators)

    def task_pre_step(self, step_name, task_datastore, metadata, run_id, task_id, flow, graph,
                      retry_count, max_user_code_retries, ubf_context, inputs):
        super().task_pre_step(step_name, task_datastore, metadata, run_id, task_id, flow, graph,
                              retry_count, max_user_code_retries, ubf_context, inputs)
        from .launch.settings import TaskIdentity

        self._task = TaskIdentity(flow.name, str(run_id), step_name, str(task_id), int(retry_count))

    def task_decorate(self, step_func, flow, graph, retry_count, max_user_code_retries, ubf_context):
        is_local = os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT", "local") == "local"
        if is_local:
            # Metaflow's local runtime signals none of its tasks when it is
            # terminated itself (`kill PID` of `python flow.py run` leaves them
            # all running). Tied to it, this task goes with it, and with the
            # task go its torchrun agent, the agent's workers and, on node 0,
            # the other nodes' tasks, each tied to its own parent.
            die_with_parent(signal.SIGTERM)
        if ubf_context == UBF_CONTROL and is_local:
            return functools.partial(self._run_local_control_task, flow, step_func, retry_count)
        # Metaflow's wrapper: setup_distributed_env, then the step.
        return super().task_decorate(
            step_func, flow, graph, retry_count, max_user_code_retries, ubf_context
        )

    def setup_distributed_env(self, flow) -> None:
        self._set_current_torch(local_nodes=None)

    def _run_local_control_task(self, flow, step_func, retry_count: int) -> None:
        """Node 0 of a local run: start the other nodes, run this node's step, wait for them.

        In place of Metaflow's launcher of the other nodes (see launch.local_nodes); the
        nodes stop when this step ends, however it ends. With ``@catch``, a failed
        step first lets the other nodes end by themselves: each fails with the same
        failure and catches it, and the join needs their tasks whole.
        """
        from .launch.local_nodes import LocalNodes

        with LocalNodes() as local_nodes:
            local_nodes.start(flow, retry_count, ",".join(self.input_paths))
            self._set_current_torch(local_nodes)
            try:
                step_func()
            except Exception:
                if self._caught:
                    local_nodes.wait_until_ended()
                raise
            local_nodes.wait()

    def _set_current_torch(self, local_nodes: Optional["LocalNodes"]) -> None:
        from .launch.launcher import TorchrunLauncher
        from .metaflow_compat import add_to_current

        launcher = TorchrunLauncher(self._task, self._flow_dir, self._settings, local_nodes)
        add_to_current("torch", launcher)

    def add_to_package(self):
        # Remote nodes run `python -m rendezvous`, and a code package carries
        # Metaflow extensions but not their entry points or other top-level
        # packages. The files go next to `metaflow` in the package, which is on
        # sys.path there. (MODULE_CONTENT cannot ship a regular package in
        # Metaflow 2.19: it takes the package's __init__.py for the package.)
        from metaflow.packaging_sys import ContentType

        import rendezvous

        root = os.path.dirname(os.path.abspath(rendezvous.__file__))
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    packaged = os.path.relpath(path, os.path.dirname(root)).replace(os.sep, "/")
                    yield path, packaged, ContentType.CODE_CONTENT


def _current_torch_outside_torchrun(_: object):
    from .errors import TorchrunNotEnabled

    raise TorchrunNotEnabled(
        "current.torch exists only in steps decorated with @torchrun: add @torchrun above "
        "@step (and call the step with self.next(..., num_parallel=N) for N nodes)."
    )
