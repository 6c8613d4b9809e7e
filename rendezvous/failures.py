"""Failure records: what a node writes to the ``failures`` key, and which one is the root cause.

A record is one line ``<node index>\\t<kind>\\t<reason>``, written by
``FailureRecord.encode`` and read back by ``parse_failures``; the reason is
kept on one line.
"""

import math
import os
from enum import Enum
from typing import List, NamedTuple, Optional, Tuple

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from .errors import JobFailedError


class FailureKind(str, Enum):
    """Whether a node failed of its own accord, or only because it lost a peer."""

    OWN = "own"
    PEER_LOST = "peer-lost"


# The kinds by their short names, as ``signal.SIGINT`` is ``signal.Signals.SIGINT``.
OWN = FailureKind.OWN
PEER_LOST = FailureKind.PEER_LOST

# Worker errors that say a peer went away: the failure of one rank makes the
# ranks talking to it fail like this, so such a failure is rarely the root cause.
_PEER_LOST_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "connectFullMesh",
    "DistNetworkError",
    "DistBackendError",
    "remote process exited",
    "NCCL error",
)


class FailureRecord(NamedTuple):
    """One record of the ``failures`` key: which node failed, how, and why."""

    node: str
    kind: FailureKind
    reason: str

    def encode(self) -> str:
        """The record's line, newline included; whitespace in the reason collapses to spaces."""
        return f"{self.node}\t{self.kind.value}\t{' '.join(self.reason.split())}\n"


def parse_failures(raw: bytes) -> List[FailureRecord]:
    """The records of a ``failures`` value, in the order they were written.

    A kind this version does not know counts as ``PEER_LOST``: such a record
    is the root cause only when no node recorded an ``OWN`` failure.
    """
    records = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        node, _, rest = line.partition("\t")
        kind, _, reason = rest.partition("\t")
        records.append(FailureRecord(node, OWN if kind == OWN.value else PEER_LOST, reason))
    return records


def root_cause(records: List[FailureRecord]) -> Optional[JobFailedError]:
    """The error every node reports.

    The first failure of kind ``OWN`` wins over failures that only say a peer
    went away, even ones recorded earlier: when a rank dies, its peers' ranks
    fail in their collectives at once, and their agents may record that first.
    """
    if not records:
        return None
    node, _, reason = next((record for record in records if record.kind == OWN), records[0])
    who = "the control node (node 0)" if node == "0" else f"node {node}"
    return JobFailedError(
        f"{who} failed first: {reason}", node_index=int(node) if node.isdigit() else None
    )


def _failure_time(failure: ProcessFailure) -> Tuple[int, float]:
    """When a worker failed: its recorded second, then when its error file was written.

    A worker without an error file was killed by a signal, most often by its
    agent stopping the workers after another one failed: within one second it
    comes after every worker that wrote one.
    """
    try:
        written: float = os.stat(failure.error_file).st_mtime_ns
    except OSError:
        written = math.inf
    return failure.timestamp, written


def describe_failure(error: BaseException) -> Tuple[str, FailureKind]:
    """One line saying how this node's agent failed, and its kind."""
    if not isinstance(error, ChildFailedError):
        return f"{type(error).__name__}: {error}", OWN
    # torch's get_first_failure compares whole-second timestamps, and a
    # rank's failure makes its peers fail within the same second: the time
    # each error file was written decides between them.
    rank, failure = min(error.failures.items(), key=lambda item: _failure_time(item[1]))
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
    text = f"global rank {rank} (local rank {failure.local_rank}) {how}"
    # Only an error file (a worker wrapped by @record, or our bootstrap)
    # carries the worker's own words; otherwise torch makes up a generic hint.
    message = failure.message if os.path.isfile(failure.error_file) else ""
    if isinstance(message, dict):  # the layout torch's @record writes
        message = message.get("message", "")
    lines = str(message).strip().splitlines()
    if lines:
        text += f": {lines[-1]}"
    kind = PEER_LOST if any(marker in str(message) for marker in _PEER_LOST_MARKERS) else OWN
    return text, kind


__all__ = [
    "OWN",
    "PEER_LOST",
    "FailureKind",
    "FailureRecord",
    "describe_failure",
    "parse_failures",
    "root_cause",
]
