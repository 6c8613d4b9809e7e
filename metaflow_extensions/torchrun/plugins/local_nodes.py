"""Nodes 1..N-1 of a local (not Kubernetes or Batch) ``@torchrun`` run.

Metaflow's own local launcher for ``@parallel`` starts them with the bare
command ``python`` from PATH, looks at them only after node 0's step returned,
and leaves them running when node 0 fails or is interrupted. This one starts
them with the interpreter running node 0 (``sys.executable``), lets node 0's
``current.torch.run`` see at once when one dies, stops them all when node 0's
step ends early, and makes each die with node 0 if node 0 is killed.
"""

import functools
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List, Optional

from .exceptions import TorchrunFailed
from .launcher import PeerFailure
from .worker_bootstrap import die_with_parent

_POLL_SECONDS = 0.1
# A node that is asked to stop (SIGINT) stops its own torchrun agent first,
# which may take up to 40 s (see launcher._AGENT_STOP_GRACE_SECONDS).
_NODE_STOP_GRACE_SECONDS = 45.0


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

    def failure(self) -> Optional[PeerFailure]:
        code = self.process.poll()
        if not code:
            return None
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return (
            self.node_index,
            f"node {self.node_index} (task {self.task_id}) {how} while node 0 was running; "
            f"its output is in this task's log above.",
        )


class LocalNodes:
    """The control task's view of the other nodes: start, watch, wait, stop."""

    def __init__(self, nodes: List[LocalNode]):
        self.nodes = nodes

    def failure(self) -> Optional[PeerFailure]:
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
            raise TorchrunFailed(failure[1], node_index=failure[0])

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


def run_control_task(
    flow,
    step_func: Callable[[], None],
    retry_count: int,
    input_paths: str,
    on_start: Callable[[LocalNodes], None],
) -> None:
    """Run a local ``@parallel`` control task: start nodes 1..N-1, run node 0's step, wait.

    ``on_start`` receives the started nodes before node 0's step runs, so that
    its ``current.torch`` can watch them.
    """
    from metaflow import current
    from metaflow.cli_args import cli_args
    from metaflow.unbounded_foreach import UBF_TASK

    num_nodes = flow._parallel_ubf_iter.num_parallel
    control_task_id = str(current.task_id)
    os.environ["MF_PARALLEL_NUM_NODES"] = str(num_nodes)
    os.environ["MF_PARALLEL_MAIN_IP"] = "127.0.0.1"
    os.environ["MF_PARALLEL_CONTROL_TASK_ID"] = control_task_id
    os.environ["MF_PARALLEL_NODE_INDEX"] = "0"
    task_ids = [control_task_id]
    nodes = []
    try:
        for node_index in range(1, num_nodes):
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
            env = dict(os.environ, MF_PARALLEL_NODE_INDEX=str(node_index))
            nodes.append(LocalNode(node_index, task_id, command, env))
        # The join step finds every node's task through this list.
        flow._control_mapper_tasks = [
            f"{current.run_id}/{current.step_name}/{task_id}" for task_id in task_ids
        ]
        local_nodes = LocalNodes(nodes)
        on_start(local_nodes)
        step_func()
        local_nodes.wait()
    finally:
        LocalNodes(nodes).stop()
