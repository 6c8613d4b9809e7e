"""What failed first when this node's torchrun agent failed, as one failure record.

The sources, most specific first: the backend's outcome file (the record of
the root cause, whichever node saw it: ``rendezvous.outcome``), this node's
workers' error files (``worker.files``), the local launcher's word on another
node that died (``local_nodes``), and, last, the agent's own final lines.
"""

import signal
from typing import List, Optional

from rendezvous.failure import TRACEBACK_TAIL_LINES, Failure, FailureKind

from ..errors import TorchrunFailed
from ..worker.files import attempt_dirs, first_error
from .command import LaunchPlan


def failure(
    plan: LaunchPlan,
    node_index: int,
    returncode: int,
    backend_outcome: Optional[Failure],
    agent_stderr: List[str],
    peer_failure: Optional[Failure],
) -> TorchrunFailed:
    """Say what failed first, from the most specific source at hand."""
    if backend_outcome is not None:
        hint = ("" if backend_outcome.node_index == node_index
                else "The failing node's own log has its full output.")
        return TorchrunFailed(backend_outcome, log_dir=plan.log_dir, returncode=returncode,
                              hint=hint)
    attempts = attempt_dirs(plan.log_dir, plan.rdzv_id)
    error = first_error(attempts[-1], node_index) if attempts else None
    if error is not None:
        return TorchrunFailed(error, log_dir=plan.log_dir, returncode=returncode)
    if peer_failure is not None:
        return TorchrunFailed(peer_failure, log_dir=plan.log_dir, returncode=returncode)
    killed_by = signal.Signals(-returncode).name if returncode < 0 else None
    how = f"was killed by {killed_by}" if killed_by else f"exited with code {returncode}"
    agent_exit = Failure(
        FailureKind.KILLED if killed_by else FailureKind.EXITED,
        f"its torchrun agent {how}; its last output (torchrun's failure table names the "
        f"rank, its exit code or signal) follows",
        node_index=node_index,
        signal=killed_by,
        traceback_tail="\n".join(agent_stderr[-TRACEBACK_TAIL_LINES:]),
    )
    return TorchrunFailed(agent_exit, log_dir=plan.log_dir, returncode=returncode)
