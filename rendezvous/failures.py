"""The ``failures`` key of the store, and how torch's view of a failure becomes a ``Failure``.

Each node that fails appends one record to the job's ``failures`` key: a
``rendezvous.failure.Failure`` as one JSON line (``encode_failure``), read
back by ``parse_failures``. ``root_cause`` picks the one every node reports.
``child_failure`` turns torch's ``ChildFailedError`` (this node's workers
failed) into a record: the rank that failed first, its exit code or signal,
its error and the end of its traceback, from the worker's error file.
"""

import math
import os
import time
from typing import List, Optional, Tuple

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from .errors import MetaflowRendezvousError
from .failure import Failure, FailureKind, last_line, traceback_tail, worker_error

# Worker errors that say a peer went away: the failure of one rank makes the
# ranks talking to it fail like this, so such a failure is rarely the root cause.
# (torch's and gloo's words, not ours.)
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


def encode_failure(failure: Failure) -> str:
    """The record's line in the ``failures`` key, newline included."""
    return failure.to_json() + "\n"


def parse_failures(raw: bytes) -> List[Failure]:
    """The records of a ``failures`` value, in the order they were written; lines that are
    not records (another version's) are left out."""
    records = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            records.append(Failure.from_json(line))
        except ValueError:
            continue
    return records


def root_cause(records: List[Failure]) -> Optional[Failure]:
    """The failure every node reports, None without records.

    The first failure that is not secondary wins over failures that only say
    a peer went away, even ones recorded earlier: when a rank dies, its peers'
    ranks fail in their collectives at once, and their agents may record that
    first.
    """
    if not records:
        return None
    return next((record for record in records if not record.secondary), records[0])


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


def _error_file_entry(failure: ProcessFailure) -> object:
    """The ``message`` entry of the worker's error file, as torch read it, else ""."""
    # Only an error file (a worker wrapped by @record, or our bootstrap)
    # carries the worker's own words; otherwise torch makes up a generic hint.
    return failure.message if os.path.isfile(failure.error_file) else ""


def child_failure(error: ChildFailedError, node_index: Optional[int]) -> Failure:
    """The record of the rank of ``error`` that failed first, on node ``node_index``."""
    # torch's get_first_failure compares whole-second timestamps, and a
    # rank's failure makes its peers fail within the same second: the time
    # each error file was written decides between them.
    rank, failed = min(error.failures.items(), key=lambda item: _failure_time(item[1]))
    text, callstack = worker_error(_error_file_entry(failed))
    message = last_line(text)
    killed = failed.exitcode < 0
    if any(marker in text for marker in _PEER_LOST_MARKERS):
        kind = FailureKind.PEER_LOST
    elif killed:
        kind = FailureKind.KILLED
    else:
        kind = FailureKind.RAISED if message else FailureKind.EXITED
    return Failure(
        kind=kind,
        message=message,
        node_index=node_index,
        rank=rank,
        local_rank=failed.local_rank,
        exit_code=None if killed else failed.exitcode,
        signal=failed.signal_name() if killed else None,
        traceback_tail=traceback_tail(callstack),
        time=float(failed.timestamp) if failed.timestamp else time.time(),
    )


def agent_failure(error: BaseException, node_index: Optional[int]) -> Failure:
    """The record of why this node's agent failed: its workers' first failure, or the error."""
    if isinstance(error, ChildFailedError):
        return child_failure(error, node_index)
    if isinstance(error, MetaflowRendezvousError):
        return error.failure(node_index)
    return Failure(FailureKind.RENDEZVOUS, f"{type(error).__name__}: {error}", node_index)


__all__ = ["agent_failure", "child_failure", "encode_failure", "parse_failures", "root_cause"]
