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
from typing import List, Optional

from metaflow import current
from metaflow.unbounded_foreach import UBF_TASK

from rendezvous.failure import Failure, FailureKind
from rendezvous.topology import Topology

from ..errors import TorchrunFailed
from ..metaflow_compat import num_parallel, set_parallel_task_paths, step_command
from ..worker.bootstrap import die_with_parent

_POLL_SECONDS = 0.1
# A node that is asked to stop (SIGINT) stops its own torchrun agent first,
# which may take up to 40 s (see launcher._AGENT_STOP_GRACE_SECONDS).
_NODE_STOP_GRACE_SECONDS = 45.0
# Every node of a local run is on this machine.
_MAIN_IP = "127.0.0.1"


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

    def failure(self) -> Optional[Failure]:
        """The record of this node's task if it ended with an error, else None."""
        code = self.process.poll()
        if not code:
            return None
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return Failure(
            FailureKind.NODE_LOST,
            f"its task {self.task_id} {how} while node 0 was running; its output is in "
            f"this task's log above.",
            node_index=self.node_index,
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
        topology = Topology(0, num_parallel(flow), _MAIN_IP, control_task_id)
        os.environ.update(topology.environment())
        task_ids = [control_task_id]
        for node_index in range(1, topology.num_nodes):
            task_id = f"{control_task_id}_node_{node_index}"
            task_ids.append(task_id)
            step_kwargs = dict(
                split_index=str(node_index),
                run_id=current.run_id,
                task_id=task_id,
                input_paths=input_paths,
                ubf_context=UBF_TASK,
                retry_count=str(retry_count),
            )
            command = step_command(sys.executable, sys.argv[0], current.step_name, step_kwargs)
            node = dataclasses.replace(topology, node_index=node_index)
            env = dict(os.environ, **node.environment())
            self.nodes.append(LocalNode(node_index, task_id, command, env))
        # The join step finds every node's task through this list.
        set_parallel_task_paths(
            flow, [f"{current.run_id}/{current.step_name}/{task_id}" for task_id in task_ids]
        )

    def failure(self) -> Optional[Failure]:
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

    def wait_until_ended(self) -> None:
        """Wait (up to the time a node takes to stop its agent) for every node to end by
        itself, whatever its exit code; ``stop`` takes care of the rest."""
        deadline = time.monotonic() + _NODE_STOP_GRACE_SECONDS
        while (any(node.process.poll() is None for node in self.nodes)
               and time.monotonic() < deadline):
            time.sleep(_POLL_SECONDS)

    def _raise_if_failed(self) -> None:
        failure = self.failure()
        if failure is not None:
            raise TorchrunFailed(failure)

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
