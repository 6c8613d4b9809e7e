"""Nodes 1..N-1 of a local (not Kubernetes or Batch) ``@torchrun`` run.

Metaflow's own local launcher for ``@parallel`` starts them with the bare
command ``python`` from PATH, looks at them only after node 0's step returned,
and leaves them running when node 0 fails or is interrupted. This one starts
them with the interpreter running node 0 (``sys.executable``), lets node 0's
``current.torch.run`` see at once when one dies, stops them all when node 0's
step ends early, and makes each die with node 0 if node 0 is killed.
"""

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from metaflow import current
from metaflow.cli_args import cli_args
from metaflow.unbounded_foreach import UBF_TASK

from rendezvous.topology import Topology

from .exceptions import TorchrunFailed
from .worker_bootstrap import die_with_parent

_POLL_SECONDS = 0.1
# A node that is asked to stop (SIGINT) stops its own torchrun agent first,
# which may take up to 40 s (see launcher._AGENT_STOP_GRACE_SECONDS).
_NODE_STOP_GRACE_SECONDS = 45.0
# Every node of a local run is on this machine.
_MAIN_IP = "127.0.0.1"


@dataclass(frozen=True)
class NodeFailure:
    """Another node of a local run that ended with an error while node 0 was running."""

    node_index: int
    summary: str


class LocalNode:
    """One Metaflow task process started by the control task."""

    def __init__(self, node_index: int, task_id: str, command: List[str], env: dict):
        self.node_index = node_index
        self.task_id = task_id
        self.process = subprocess.Popen(
            command,
            env=env,
            preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, os.getpid()),
        )

    def failure(self) -> Optional[NodeFailure]:
        code = self.process.poll()
        if not code:
            return None
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return NodeFailure(
            self.node_index,
            f"node {self.node_index} (task {self.task_id}) {how} while node 0 was running; "
            f"its output is in this task's log above.",
        )


class LocalNodes:
    """The control task's other nodes: start, watch, wait, stop.

    Use it as a context manager: leaving the block stops the nodes still
    running, whether node 0's step succeeded, failed or was interrupted.
    """

    def __init__(self) -> None:
        self.nodes: List[LocalNode] = []

    def __enter__(self) -> "LocalNodes":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, flow, retry_count: int, input_paths: str) -> None:
        """Start nodes 1..N-1 of the step as Metaflow task processes; this process is node 0.

        Sets this process's ``MF_PARALLEL_*`` variables (node 0's topology),
        which the other nodes inherit with their own index, and the task list
        that the join step reads.
        """
        control_task_id = str(current.task_id)
        topology = Topology(0, flow._parallel_ubf_iter.num_parallel, _MAIN_IP, control_task_id)
        os.environ.update(topology.environment())
        task_ids = [control_task_id]
        for node_index in range(1, topology.num_nodes):
            task_id = f"{control_task_id}_node_{node_index}"
            task_ids.append(task_id)
            step_kwargs = dict(
                cli_args.step_kwargs,
                split_index=str(node_index),
                run_id=current.run_id,
                task_id=task_id,
                input_paths=input_paths,
                ubf_context=UBF_TASK,
                retry_count=str(retry_count),
            )
            command = cli_args.step_command(
                sys.executable, sys.argv[0], current.step_name, step_kwargs=step_kwargs
            )
            node = dataclasses.replace(topology, node_index=node_index)
            env = dict(os.environ, **node.environment())
            self.nodes.append(LocalNode(node_index, task_id, command, env))
        # The join step finds every node's task through this list.
        flow._control_mapper_tasks = [
            f"{current.run_id}/{current.step_name}/{task_id}" for task_id in task_ids
        ]

    def failure(self) -> Optional[NodeFailure]:
        """The first node found dead with an error, or None."""
        for node in self.nodes:
            failure = node.failure()
            if failure is not None:
                return failure
        return None

    def wait(self) -> None:
        """Wait for every node to finish; raise as soon as one failed."""
        while any(node.process.poll() is None for node in self.nodes):
            self._raise_if_failed()
            time.sleep(_POLL_SECONDS)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        failure = self.failure()
        if failure is not None:
            raise TorchrunFailed(failure.summary, node_index=failure.node_index)

    def stop(self) -> None:
        """Interrupt the nodes still running (they stop their agents), kill them if they hang."""
        running = [node.process for node in self.nodes if node.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + _NODE_STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
