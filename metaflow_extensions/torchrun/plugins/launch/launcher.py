"""``current.torch``: starts this node's torchrun agent for an unchanged torchrun program.

Every node of a ``@torchrun`` step calls ``current.torch.run`` with the same
arguments; each starts one agent, ``python -m rendezvous`` (torchrun with the
``metaflow`` backend), and the backend forms the job from the Metaflow nodes.
This module plans the call (``command``), starts and supervises the agent, and
leaves the reading of a failure to ``post_mortem``. With ``@card`` on the step,
each call also feeds its section of the card (``card.live``).
"""

import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional

from rendezvous.failure import Failure, FailureKind
from rendezvous.hangs.probe import DIRECTORY_VAR as HANG_DIRECTORY_VAR
from rendezvous.hangs.probe import LAUNCHER_DIRS_VAR as HANG_LAUNCHER_DIRS_VAR
from rendezvous.outcome import OUTCOME_FILE_VAR, STOP_REASON_FILE_VAR, read_outcome
from rendezvous.topology import Topology, read_topology

from ..card.live import JobCard
from ..errors import TorchrunArgumentError, TorchrunFailed
from ..result import TorchrunResult
from ..worker import bootstrap
from ..worker.files import attempt_dirs, read_return_values
from . import post_mortem
from .command import LaunchPlan, NprocSpec, parse_torchrun_args, plan_launch, resolve_nproc_per_node
from .local_nodes import LocalNodes
from .log_pump import LogPump
from .program import (
    FUNCTION,
    ArgsSpec,
    Entrypoint,
    EntrypointSpec,
    entrypoint_argv,
    function_call,
    resolve_entrypoint,
)
from .settings import StepSettings, TaskIdentity

_POLL_SECONDS = 0.1
# After another local node died, how long the agent may take to stop on its own:
# the backend tells it within a poll when that node's agent had joined (and its
# own failure message is the more precise one); a node that died before it
# joined would leave the agent waiting for the whole join timeout.
_PEER_GRACE_SECONDS = 5.0
# torch gives workers 30 s to stop after SIGTERM, and node 0 waits up to 5 s for
# the other nodes to close the rendezvous; past that the agent is killed.
_AGENT_STOP_GRACE_SECONDS = 40.0


# Arguments of the original metaflow-torchrun's run(), which it checked and then
# ignored, with what to use instead.
_REMOVED_OPTIONS = {
    "push_results_dir_to_cloud": "return what the step needs from a function entrypoint "
    "(result.value) and store it as an artifact, or save files with Metaflow's S3 client",
    "local_output_dir": "return the results from a function entrypoint (result.value) and "
    "store them as artifacts (self.x = ...)",
    "cloud_output_dir": "store results as artifacts (self.x = result.value), which go to the "
    "flow's datastore",
}


def refuse_removed_options(given: Mapping[str, object]) -> None:
    """Refuse the original package's output-directory options (any value), saying what to use.

    Raises:
        TorchrunArgumentError: one of them was given.
    """
    for name, instead in _REMOVED_OPTIONS.items():
        if given.get(name) is not None:
            raise TorchrunArgumentError(
                f"{name} is not supported: the original metaflow-torchrun accepted it but "
                f"never used it. Instead, {instead}."
            )


def _program_args(entry: Entrypoint, entrypoint_args: ArgsSpec, scratch: str,
                  returned_dir: str) -> List[str]:
    """What the bootstrap passes on to the program: a script's argv; for a
    function, the file in ``scratch`` its pickled arguments go to and the
    directory its return values come back in.

    Raises:
        TorchrunArgumentError: the arguments do not fit the entry point.
    """
    if entry.kind != FUNCTION:
        return entrypoint_argv(entrypoint_args)
    call_file = os.path.join(scratch, "call.pickle")
    with open(call_file, "wb") as call:
        call.write(function_call(entrypoint_args))
    return [call_file, returned_dir]


class TorchrunLauncher:
    """``current.torch`` in a ``@torchrun`` step; the decorator builds one per task.

    ``local_nodes``, on node 0 of a local run, are the other nodes: ``run``
    stops at once when one of them dies instead of waiting for it to join.
    ``topology`` fixes the job's layout (one node, for
    ``TorchrunSingleNodeMultiGPU``); by default each call reads the one
    Metaflow's ``@parallel`` set in the environment.
    """

    def __init__(
        self,
        task: TaskIdentity,
        flow_dir: str,
        settings: StepSettings,
        local_nodes: Optional[LocalNodes] = None,
        topology: Optional[Topology] = None,
    ):
        self._task = task
        self._flow_dir = flow_dir
        self._settings = settings
        self._local_nodes = local_nodes
        self._topology = topology
        self._calls = 0

    def run(
        self,
        entrypoint: EntrypointSpec = None,
        entrypoint_args: ArgsSpec = None,
        nproc_per_node: NprocSpec = None,
        torchrun_args: ArgsSpec = None,
        *,
        module: Optional[str] = None,
        push_results_dir_to_cloud: object = None,
        local_output_dir: object = None,
        cloud_output_dir: object = None,
    ) -> TorchrunResult:
        """Run a torchrun program on every node of this step and wait for it.

        Call it with the same arguments on every node. Worker output appears
        in this task's stdout and stderr as it comes, each line prefixed with
        ``[rank<global rank>]:``; per-rank files stay in ``result.log_dir``.

        Parameters
        ----------
        entrypoint : str or function, optional
            Path of the script, relative to the flow file's directory or
            absolute; or a function defined at the top level of the flow file,
            of a module next to it or of an installed package, which every
            worker calls once (see ``result.return_values``).
        entrypoint_args : dict or list, optional
            The program's arguments. For a script, a dict gives ``--key value``
            in order (``True``: bare ``--key``; ``False``/``None``: left out; a
            list: ``--key v1 v2``), values through ``str()`` only, and a list is
            passed as given. For a function, a dict gives keyword arguments and
            a list or tuple positional ones, any values that pickle.
        nproc_per_node : int or "auto", optional
            Worker processes per node. Default: ``--nproc-per-node`` in
            ``torchrun_args``, else ``@torchrun(nproc_per_node)``, else the GPUs
            requested with ``@resources``/``@kubernetes``/``@batch``, else 1.
        torchrun_args : dict or list, optional
            More torchrun flags, e.g. ``{"max_restarts": 1}`` or
            ``["--max-restarts", "1"]``. Flags that the job's layout fixes
            (nnodes, node rank, rdzv backend/endpoint/id, master addr/port,
            tee/redirects) are refused.
        module : str, optional
            Instead of ``entrypoint``: a module to run like ``python -m module``,
            found from the flow file's directory.
        push_results_dir_to_cloud, local_output_dir, cloud_output_dir
            Options of the original metaflow-torchrun, which ignored them:
            refused, with what to use instead.

        Returns
        -------
        TorchrunResult
            Exit code, wall time, restarts, the per-rank log directory, and a
            function's return values (``result.value`` is rank 0's, on node 0).

        Raises
        ------
        TorchrunArgumentError
            Bad input; raised before anything starts.
        TorchrunFailed
            A rank, a node or the rendezvous failed; names what failed first.
        """
        refuse_removed_options({
            "push_results_dir_to_cloud": push_results_dir_to_cloud,
            "local_output_dir": local_output_dir,
            "cloud_output_dir": cloud_output_dir,
        })
        flags = parse_torchrun_args(torchrun_args)
        entry = resolve_entrypoint(entrypoint, module, self._flow_dir)
        with tempfile.TemporaryDirectory(prefix="torchrun-agent-") as scratch:
            returned_dir = os.path.join(scratch, "returned")
            # entrypoint_args before nproc_per_node: of two bad arguments, the first is named.
            program_args = _program_args(entry, entrypoint_args, scratch, returned_dir)
            nproc = resolve_nproc_per_node(
                nproc_per_node,
                flags.nproc_per_node,
                self._settings.nproc_per_node,
                self._settings.requested_gpus,
            )
            topology = self._topology or _read_topology()
            self._calls += 1
            rdzv_id = self._task.rendezvous_id(topology.control_task_id, self._calls)
            port = self._settings.master_port
            plan = plan_launch(
                python=sys.executable,
                num_nodes=topology.num_nodes,
                nproc_per_node=nproc,
                rdzv_id=rdzv_id,
                # The backend puts node 0's address in front of a bare ":port"; for
                # a bare address it takes @kubernetes(port=...) or derives the port
                # from the rdzv id. (Passing an
                # endpoint also keeps torchrun from warning about master_addr.)
                rdzv_endpoint=f":{port}" if port else topology.main_ip,
                join_timeout=self._settings.join_timeout,
                hang_timeout=self._settings.hang_timeout,
                hang_fail_after=self._settings.hang_fail_after,
                default_log_dir=os.path.join(
                    tempfile.gettempdir(), "metaflow-torchrun", rdzv_id,
                    f"node-{topology.node_index}",
                ),
                flags=flags,
                bootstrap=os.path.abspath(bootstrap.__file__),
                entry=entry,
                program_args=program_args,
            )
            card = JobCard.for_call(self._calls, plan, topology, self._settings, entrypoint_args,
                                    hang_dir=_hang_dir(scratch))
            result = self._launch(plan, topology, os.path.join(scratch, "outcome.json"), card)
            return replace(result, return_values=_return_values(returned_dir, plan))

    def _launch(self, plan: LaunchPlan, topology: Topology, outcome_path: str,
                card: Optional[JobCard]) -> TorchrunResult:
        try:
            os.makedirs(plan.log_dir, exist_ok=True)
        except OSError as error:
            raise TorchrunArgumentError(
                f"cannot create the per-rank log directory {plan.log_dir}: "
                f"{error.strerror or error}. Choose a writable one with "
                f"torchrun_args={{'log_dir': ...}}."
            ) from None
        return self._supervise(plan, topology, outcome_path, card)

    def _supervise(self, plan: LaunchPlan, topology: Topology, outcome_path: str,
                   card: Optional[JobCard]) -> TorchrunResult:
        """Run the agent to its end, stopping it if a local peer died; say how it ended.

        The backend writes its summary to ``outcome_path`` when it ends the agent.
        ``card``, if given, sees every line of the agent and how it ended.
        """
        started = time.monotonic()
        stop_reason_path = os.path.join(os.path.dirname(outcome_path), "stop-reason")
        agent = subprocess.Popen(
            plan.command,
            env={
                **plan.environment(os.environ),
                **topology.environment(),
                OUTCOME_FILE_VAR: outcome_path,
                STOP_REASON_FILE_VAR: stop_reason_path,
                HANG_DIRECTORY_VAR: _hang_dir(os.path.dirname(outcome_path)),
                # Every worker runs the user's program from our bootstrap: not the user's frames.
                HANG_LAUNCHER_DIRS_VAR: os.path.dirname(os.path.abspath(bootstrap.__file__)),
            },
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # The agent stops its workers on SIGTERM; it gets one if this task dies.
            preexec_fn=functools.partial(
                bootstrap.die_with_parent, signal.SIGTERM, os.getpid()
            ),
        )
        pump = LogPump([agent.stdout, agent.stderr], [sys.stdout, sys.stderr],
                       on_line=card.line if card is not None else None).start()
        if card is not None:
            card.start(agent_running=lambda: agent.poll() is None)
        peer_failure: Optional[Failure] = None
        stop_at = float("inf")
        stopped_for_peer = False
        try:
            while True:
                try:
                    returncode = agent.wait(_POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if peer_failure is None and self._local_nodes is not None:
                    peer_failure = self._local_nodes.failure()
                    if peer_failure is not None:
                        stop_at = time.monotonic() + _PEER_GRACE_SECONDS
                elif not stopped_for_peer and time.monotonic() >= stop_at:
                    stopped_for_peer = True
                    _stop(agent)
        finally:
            if agent.poll() is None:  # interrupted (Ctrl-C, @timeout, task killed): take the agent down
                _say_why_stopped(stop_reason_path, sys.exc_info()[1])
                _stop(agent)
                if card is not None:
                    card.stop()
            pump.join()
        wall_time = time.monotonic() - started
        if returncode != 0 or peer_failure is not None:
            # When we stopped the agent, its last words are about that stop.
            if stopped_for_peer:
                backend_outcome, agent_stderr = None, []
            else:
                backend_outcome, agent_stderr = read_outcome(outcome_path), pump.tail(1)
            failure = post_mortem.failure(
                plan, topology.node_index, returncode, backend_outcome, agent_stderr, peer_failure
            )
            if card is not None:
                card.finish(failure)
            raise failure
        if card is not None:
            card.finish(None)
        return TorchrunResult(
            exit_code=returncode,
            wall_time=wall_time,
            restarts=max(0, len(attempt_dirs(plan.log_dir, plan.rdzv_id)) - 1),
            log_dir=plan.log_dir,
        )


def _hang_dir(scratch: str) -> str:
    """Where the workers' hang probes write and the backend keeps its hang report, which
    the card reads (``rendezvous.hangs``)."""
    return os.path.join(scratch, "hangs")


def _return_values(results_dir: str, plan: LaunchPlan) -> Dict[int, Any]:
    try:
        return read_return_values(results_dir)
    except Exception as error:  # unpickling raises whatever the value's classes raise
        unpickled = Failure(
            FailureKind.RAISED,
            f"every rank succeeded, but a return value cannot be unpickled in this task: "
            f"{type(error).__name__}: {error}. Return values whose classes this task can "
            f"import (numbers, strings, lists, dicts, tensors).",
        )
        raise TorchrunFailed(unpickled, log_dir=plan.log_dir) from None


def _read_topology() -> Topology:
    try:
        return read_topology()
    except ValueError as error:  # rendezvous.errors.TopologyError
        raise TorchrunArgumentError(
            f"this task's place in the @parallel job is unknown: {error}"
        ) from None


def _say_why_stopped(path: str, interruption: Optional[BaseException]) -> None:
    """Leave the agent the reason its step stops it (``@timeout``'s error, an interrupt), which
    its backend records for the other nodes in place of a bare signal."""
    if interruption is None:
        return
    lines = str(interruption).strip().splitlines()  # @timeout's goes on with a stack
    reason = f"its step was interrupted: {type(interruption).__name__}"
    if lines:
        reason += f": {lines[0].strip()}"
    try:
        with open(path, "w") as reason_file:
            reason_file.write(reason)
    except OSError:
        pass  # the other nodes are told of a signal instead


def _stop(agent: subprocess.Popen) -> None:
    """SIGTERM the agent (it stops its workers and tells the other nodes), SIGKILL if it hangs."""
    agent.terminate()
    try:
        agent.wait(_AGENT_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        agent.kill()  # its workers die with it (bootstrap.die_with_parent)
        agent.wait()
