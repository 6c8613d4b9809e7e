"""``TorchrunSingleNodeMultiGPU``: one node with N worker processes, in any Metaflow step.

The name, and the order of ``run``'s arguments, are those of the original
metaflow-torchrun, so that its flows run unchanged. The job is a one-node
``current.torch`` job: the same launcher, backend, logs, errors and result.
Nothing here imports torch, the launcher or our exceptions until ``run`` is
called: Metaflow imports this module on every ``import metaflow``, and the
exceptions import metaflow themselves (importing them first must not make a cycle).
"""

import os
import socket
import sys
from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:
    from .launch.command import NprocSpec
    from .launch.launcher import TorchrunLauncher
    from .launch.program import ArgsSpec, EntrypointSpec
    from .launch.settings import TaskIdentity
    from .result import TorchrunResult

# The default of @torchrun(all_nodes_started_timeout): one node joins at once,
# but a slow machine may take a while to start the agent.
_JOIN_TIMEOUT_SECONDS = 600.0
# One launcher per task, whichever instance calls: the launcher numbers the
# calls, which gives each its own rendezvous id (and log directory).
_LAUNCHERS: "Dict[TaskIdentity, TorchrunLauncher]" = {}


class TorchrunSingleNodeMultiGPU:
    """Run a torchrun program as one node with N processes, in any step.

    No ``@torchrun`` and no ``num_parallel`` needed: the step's task is the
    only node, and its workers talk over the loopback interface. Logs, errors
    and the result are those of ``current.torch.run``.
    """

    def run(
        self,
        torchrun_args: "ArgsSpec" = None,
        entrypoint: "EntrypointSpec" = None,
        entrypoint_args: "ArgsSpec" = None,
        nproc_per_node: "NprocSpec" = None,
        *,
        module: "str | None" = None,
        push_results_dir_to_cloud: object = None,
        local_output_dir: object = None,
        cloud_output_dir: object = None,
    ) -> "TorchrunResult":
        """Run the program with ``nproc_per_node`` processes (default 1) and wait for it.

        The arguments are those of ``current.torch.run``, in the original
        package's order: ``torchrun_args, entrypoint, entrypoint_args,
        nproc_per_node``.

        Raises:
            TorchrunArgumentError: bad input, or not called inside a Metaflow
                step; raised before anything starts.
            TorchrunFailed: a rank failed; names which.
        """
        return _task_launcher().run(
            entrypoint,
            entrypoint_args,
            nproc_per_node,
            torchrun_args,
            module=module,
            push_results_dir_to_cloud=push_results_dir_to_cloud,
            local_output_dir=local_output_dir,
            cloud_output_dir=cloud_output_dir,
        )


def _task_launcher() -> "TorchrunLauncher":
    """This task's one-node launcher, made on the first call."""
    from metaflow import current

    from rendezvous.topology import Topology

    from .errors import TorchrunArgumentError
    from .launch.launcher import TorchrunLauncher
    from .launch.settings import StepSettings, TaskIdentity

    if not current.is_running_flow:
        raise TorchrunArgumentError(
            "TorchrunSingleNodeMultiGPU().run() runs inside a step of a Metaflow flow: call "
            "it from a @step method."
        )
    task = TaskIdentity(
        current.flow_name, str(current.run_id), current.step_name, str(current.task_id),
        int(current.retry_count),
    )
    if task not in _LAUNCHERS:
        settings = StepSettings(
            nproc_per_node=None,
            master_port=_free_loopback_port(),
            join_timeout=_JOIN_TIMEOUT_SECONDS,
            requested_gpus=0,
        )
        topology = Topology(node_index=0, num_nodes=1, main_ip="127.0.0.1")
        _LAUNCHERS[task] = TorchrunLauncher(task, _flow_dir(), settings, topology=topology)
    return _LAUNCHERS[task]


def _flow_dir() -> str:
    """The directory of the flow file, which a Metaflow task runs as ``__main__``."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.dirname(os.path.abspath(main_file)) if main_file else os.getcwd()


def _free_loopback_port() -> int:
    """A port free on 127.0.0.1 now, for the one node's store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
