"""What a finished torchrun agent left on this node, and what failed first when it failed.

Each source is read through the module that writes it: the backend's outcome
(``rendezvous.outcome``), the workers' error files (``worker_bootstrap``), the
local launcher's word on another node (``local_nodes``), and, last, the
agent's own final lines.
"""

import glob
import os
from typing import List, Optional

from rendezvous.outcome import TRACEBACK_TAIL_LINES, Outcome, traceback_tail

from .command import LaunchPlan
from .exceptions import TorchrunFailed
from .local_nodes import NodeFailure
from .worker_bootstrap import attempt_number, first_error


def attempt_dirs(plan: LaunchPlan) -> List[str]:
    """This node's attempt directories of the plan's job, first to last.

    torchrun's ``--log-dir`` layout is ``<log dir>/<rdzv id>_<random>/attempt_<n>``;
    a restart in a new rendezvous round makes the next attempt.
    """
    found = glob.glob(os.path.join(plan.log_dir, f"{plan.rdzv_id}_*", "attempt_*"))
    return sorted(found, key=attempt_number)


def failure(
    plan: LaunchPlan,
    node_index: int,
    returncode: int,
    backend_outcome: Optional[Outcome],
    agent_stderr: List[str],
    peer_failure: Optional[NodeFailure],
) -> TorchrunFailed:
    """Say what failed first, from the most specific source at hand.

    The backend's outcome names the first failing node and rank, with the
    end of its traceback when that node recorded one; this node's error files
    hold a local rank's traceback; a local peer that died is named by the
    local launcher; otherwise the agent's last lines (torchrun's failure
    table) say what happened.
    """
    if backend_outcome is not None:  # the rendezvous failed, or another node failed first
        return TorchrunFailed(
            backend_outcome.summary,
            traceback_tail=backend_outcome.traceback_tail,
            log_dir=plan.log_dir,
            returncode=returncode,
            hint="The failing node's own log has its full output.",
        )
    attempts = attempt_dirs(plan)
    error = first_error(attempts[-1]) if attempts else None
    if error is not None:
        tail = traceback_tail(error.traceback)
        if error.rank:
            who = f"global rank {error.rank} (node {node_index}, local rank {error.local_rank})"
        else:  # an error file without our rank
            who = f"local rank {error.local_rank} of node {node_index}"
        return TorchrunFailed(
            f"{who} failed with exit code 1: {error.message}",
            traceback_tail=tail,
            log_dir=plan.log_dir,
            returncode=returncode,
            node_index=node_index,
        )
    if peer_failure is not None:
        return TorchrunFailed(
            peer_failure.summary,
            log_dir=plan.log_dir,
            returncode=returncode,
            node_index=peer_failure.node_index,
        )
    return TorchrunFailed(
        f"torchrun on node {node_index} exited with code {returncode}; its last output "
        f"(torchrun's failure table names the rank, its exit code or signal):",
        traceback_tail="\n".join(agent_stderr[-TRACEBACK_TAIL_LINES:]),
        log_dir=plan.log_dir,
        returncode=returncode,
        node_index=node_index,
    )
