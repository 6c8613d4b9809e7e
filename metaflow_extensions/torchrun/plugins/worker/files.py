"""What the workers of one node leave on disk, read back by the task.

torchrun's ``--log-dir`` layout is ``<log dir>/<rdzv id>_<random>/attempt_<n>/<local rank>/``
with ``{stdout,stderr}.log`` and, for a rank that raised, torchelastic's
``error.json``, written by the bootstrap (``bootstrap.record_error``) or by
torch's ``@record`` in the program. A function entrypoint's return values lie
where ``bootstrap.return_value_path`` puts them. This module reads both for the
task: the failing rank as a failure record, the values of the last attempt.
"""

import glob
import json
import os
import pickle
from typing import Any, Dict, List, Optional, Tuple

from rendezvous.failure import Failure, FailureKind, last_line, traceback_tail, worker_error

from .bootstrap import return_value_path


def attempt_number(attempt_dir: str) -> int:
    """N of a directory named ``attempt_<N>``: torchrun's per-attempt log
    directories, and the bootstrap's per-attempt return values."""
    return int(attempt_dir.rsplit("_", 1)[1])


def attempt_dirs(log_dir: str, rdzv_id: str) -> List[str]:
    """The attempt directories of job ``rdzv_id`` under ``log_dir``, first to last.

    A restart in a new rendezvous round makes the next attempt.
    """
    found = glob.glob(os.path.join(log_dir, f"{rdzv_id}_*", "attempt_*"))
    return sorted(found, key=attempt_number)


def _read_error_file(path: str, node_index: int) -> Tuple[Tuple[int, int], Failure]:
    """The record of one error file, and when it was written (its second, then its mtime)."""
    with open(path) as error_file:
        entry = json.load(error_file)["message"]
    written = os.stat(path).st_mtime_ns
    extra = entry.get("extraInfo", {})
    rank = str(extra.get("rank", ""))  # "" in a file of torch's own @record
    timestamp = int(extra.get("timestamp", 0))
    text, callstack = worker_error(entry)
    failure = Failure(
        kind=FailureKind.RAISED,
        message=last_line(text),
        node_index=node_index,
        rank=int(rank) if rank.isdigit() else None,
        local_rank=int(os.path.basename(os.path.dirname(path))),
        exit_code=1,  # the bootstrap's and torch's @record's after an uncaught exception
        traceback_tail=traceback_tail(callstack or text),
        time=float(timestamp or written / 1e9),
    )
    return (timestamp, written), failure


def first_error(attempt_dir: str, node_index: int) -> Optional[Failure]:
    """The earliest error recorded by the workers of one attempt on node ``node_index``.

    None if no worker recorded one; files in another layout are skipped. The
    recorded timestamp has whole seconds only, and a rank's failure makes its
    peers fail within the same second: the time each file was written decides
    between them.
    """
    found = []
    for path in glob.glob(os.path.join(attempt_dir, "*", "error.json")):
        try:
            found.append(_read_error_file(path, node_index))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return min(found, key=lambda item: item[0])[1] if found else None


def read_return_values(results_dir: str) -> Dict[int, Any]:
    """``{global rank: value}`` saved by this node's workers in their last attempt.

    Only the last attempt counts: values of an attempt that failed and was
    restarted are left behind. Empty when no worker saved one (a script).

    Raises:
        pickle.UnpicklingError, ImportError, AttributeError, ...: a value cannot
            be unpickled here; whatever unpickling raised.
    """
    attempts = glob.glob(os.path.dirname(return_value_path(results_dir, "*", "0")))
    if not attempts:
        return {}
    last = max(attempts, key=attempt_number)
    values = {}
    for path in glob.glob(return_value_path(results_dir, str(attempt_number(last)), "*")):
        rank = int(os.path.basename(path)[len("rank_"):-len(".pickle")])
        with open(path, "rb") as saved:
            values[rank] = pickle.load(saved)
    return dict(sorted(values.items()))


__all__ = ["attempt_dirs", "attempt_number", "first_error", "read_return_values"]
