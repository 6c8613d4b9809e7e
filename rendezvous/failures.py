"""Failure records: what a node writes to the ``failures`` key, and which one is the root cause.

A record is one line ``<node index>\\t<kind>\\t<reason>[\\t<traceback tail>]``,
written by ``FailureRecord.encode`` and read back by ``parse_failures``; the
reason is kept on one line, and the end of the failing rank's traceback, when
its error file has one, is a JSON string (no newline or tab in it). The tail
lets every node show the traceback of a rank that failed on another node.
"""

import json
import math
import os
from enum import Enum
from typing import List, NamedTuple, Optional, Tuple

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from .errors import JobFailedError
from .outcome import traceback_tail


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


# How much of a failing rank's traceback a record carries: its last lines
# (``outcome.traceback_tail``), at most this many characters in all (every node
# reads the records at a failure).
_TRACEBACK_TAIL_CHARS = 4000


class FailureRecord(NamedTuple):
    """One record of the ``failures`` key: which node failed, how, and why."""

    node: str
    kind: FailureKind
    reason: str
    traceback_tail: str = ""

    def encode(self) -> str:
        """The record's line, newline included; whitespace in the reason collapses to spaces."""
        line = f"{self.node}\t{self.kind.value}\t{' '.join(self.reason.split())}"
        if self.traceback_tail:
            line += "\t" + json.dumps(self.traceback_tail[-_TRACEBACK_TAIL_CHARS:])
        return line + "\n"


def parse_failures(raw: bytes) -> List[FailureRecord]:
    """The records of a ``failures`` value, in the order they were written.

    A kind this version does not know counts as ``PEER_LOST``: such a record
    is the root cause only when no node recorded an ``OWN`` failure. A
    traceback tail that does not parse is left out.
    """
    records = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        node, kind, reason, encoded_tail = (line.split("\t", 3) + ["", "", ""])[:4]
        try:
            tail = json.loads(encoded_tail) if encoded_tail else ""
        except ValueError:
            tail = ""
        records.append(FailureRecord(
            node, OWN if kind == OWN.value else PEER_LOST, reason,
            tail if isinstance(tail, str) else "",
        ))
    return records


def root_cause(records: List[FailureRecord]) -> Optional[JobFailedError]:
    """The error every node reports.

    The first failure of kind ``OWN`` wins over failures that only say a peer
    went away, even ones recorded earlier: when a rank dies, its peers' ranks
    fail in their collectives at once, and their agents may record that first.
    """
    if not records:
        return None
    node, _, reason, tail = next((record for record in records if record.kind == OWN), records[0])
    who = "the control node (node 0)" if node == "0" else f"node {node}"
    return JobFailedError(
        f"{who} failed first: {reason}",
        node_index=int(node) if node.isdigit() else None,
        traceback_tail=tail,
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


def _first_failure(error: ChildFailedError) -> Tuple[int, ProcessFailure]:
    """The global rank that failed first, and its failure."""
    # torch's get_first_failure compares whole-second timestamps, and a
    # rank's failure makes its peers fail within the same second: the time
    # each error file was written decides between them.
    return min(error.failures.items(), key=lambda item: _failure_time(item[1]))


def _error_file_message(failure: ProcessFailure) -> object:
    """What the worker's error file says (a dict in the layout torch's @record writes), else ""."""
    # Only an error file (a worker wrapped by @record, or our bootstrap)
    # carries the worker's own words; otherwise torch makes up a generic hint.
    return failure.message if os.path.isfile(failure.error_file) else ""


def describe_failure(error: BaseException) -> Tuple[str, FailureKind]:
    """One line saying how this node's agent failed, and its kind."""
    if not isinstance(error, ChildFailedError):
        return f"{type(error).__name__}: {error}", OWN
    rank, failure = _first_failure(error)
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
    text = f"global rank {rank} (local rank {failure.local_rank}) {how}"
    message = _error_file_message(failure)
    if isinstance(message, dict):  # the layout torch's @record writes
        message = message.get("message", "")
    lines = str(message).strip().splitlines()
    if lines:
        text += f": {lines[-1]}"
    kind = PEER_LOST if any(marker in str(message) for marker in _PEER_LOST_MARKERS) else OWN
    return text, kind


def failure_traceback_tail(error: BaseException) -> str:
    """The end of the traceback of the rank ``describe_failure`` names, or "" without one."""
    if not isinstance(error, ChildFailedError):
        return ""
    message = _error_file_message(_first_failure(error)[1])
    if not isinstance(message, dict):
        return ""
    callstack = str(message.get("extraInfo", {}).get("py_callstack", ""))
    return traceback_tail(callstack)


__all__ = [
    "OWN",
    "PEER_LOST",
    "FailureKind",
    "FailureRecord",
    "describe_failure",
    "failure_traceback_tail",
    "parse_failures",
    "root_cause",
]
