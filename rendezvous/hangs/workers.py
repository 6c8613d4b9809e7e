"""This node's workers as its agent sees them: their progress files, their waits, their stacks.

The probe in each worker (``probe``) writes ``rank-<R>.json`` to the node's hang
directory; ``progress`` reads the records of the agent's live children,
``waits`` says how long each has waited in the collective it is in, and
``snapshot`` signals them for their stacks and makes one ``RankSnapshot`` each
(``records``), for node 0's diagnosis. Standard library only.
"""

import os
import time
from typing import Any, Dict, List

from . import probe
from .records import STACK_FRAMES, GroupPosition, RankSnapshot
from .stacks import below_the_program, thread_stacks, user_frame

# How long a snapshot waits for its ranks' stacks.
_STACKS_TIMEOUT = 2.0
# At most this much of a rank's dump of every thread travels to node 0.
_THREADS_CHARS = 8000


def progress(directory: str) -> List[Dict[str, Any]]:
    """The progress records of this node's live workers (children of this agent), by rank."""
    records = []
    try:
        names = os.listdir(directory)
    except OSError:
        return records
    for name in names:
        if name.startswith("rank-") and name.endswith(".json"):
            record = probe.read_progress(os.path.join(directory, name))
            if record is not None and _is_my_worker(record.get("pid")):
                records.append(record)
    return sorted(records, key=lambda record: record.get("rank", 0))


def waits(records: List[Dict[str, Any]]) -> List[float]:
    """How long each rank of ``records`` has waited in each collective it is in, in seconds."""
    now = time.time()
    return [position.waited for record in records for group in record.get("groups", ())
            for position in [_group_position(group, now)] if position.waiting]


def snapshot(directory: str, node_index: int, records: List[Dict[str, Any]]) -> List[RankSnapshot]:
    """The ranks of ``records`` now: positions from their progress files, stacks by signal."""
    signalled = []
    for record in records:
        path = probe.stacks_path(directory, int(record["rank"]))
        number = record.get("stack_signal")
        try:
            os.truncate(path, 0)
            if number:
                os.kill(int(record["pid"]), int(number))
                signalled.append(path)
        except OSError:
            continue
    _wait_for_dumps(signalled)
    now = time.time()
    snapshots = []
    for record in records:
        rank = int(record["rank"])
        try:
            probe_ran = os.stat(probe.progress_path(directory, rank)).st_mtime
        except OSError:
            probe_ran = now
        try:
            with open(probe.stacks_path(directory, rank)) as stacks_file:
                threads = stacks_file.read()
        except OSError:
            threads = ""
        main = thread_stacks(threads).get(int(record.get("main_thread") or 0), ())
        library_dirs = record.get("library_dirs", ())
        snapshots.append(RankSnapshot(
            node=node_index,
            rank=rank,
            local_rank=int(record.get("local_rank", 0)),
            groups=tuple(_group_position(group, now) for group in record.get("groups", ())),
            positions_known=bool(record.get("positions_known", True)),
            where=user_frame(main, library_dirs),
            stack=below_the_program(main, library_dirs)[:STACK_FRAMES],
            threads=threads[-_THREADS_CHARS:],
            probe_silent=max(0.0, now - probe_ran),
        ))
    return snapshots


def _group_position(group: Dict[str, Any], now: float) -> GroupPosition:
    """A probe's record of one group as a ``GroupPosition``, its wait measured up to ``now``."""
    waiting = group.get("entered", 0) > group.get("completed", 0) and group.get("entered_at")
    return GroupPosition(
        group=str(group["group"]), ranks=tuple(group.get("ranks", ())),
        entered=int(group.get("entered", 0)), completed=int(group.get("completed", 0)),
        op=str(group.get("op", "")), waited=now - group["entered_at"] if waiting else 0.0,
    )


def _is_my_worker(pid: object) -> bool:
    """Whether ``pid`` is a live child of this agent: only those may get the stack signal.

    Without ``/proc`` (macOS), whether it is alive: its probe started only as this
    agent's child, and such a system has no stack signal (``probe.STACK_SIGNAL``).
    """
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return False  # a process that is gone
        try:
            os.kill(int(pid), 0)
        except (OSError, ValueError, TypeError):
            return False
        return True
    except (OSError, ValueError, TypeError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[1]) == os.getpid()


def _wait_for_dumps(paths: List[str]) -> None:
    """Until each file has stopped growing for a moment after it got something, or the timeout."""
    deadline = time.monotonic() + _STACKS_TIMEOUT
    sizes: Dict[str, int] = {}
    while paths and time.monotonic() < deadline:
        time.sleep(0.05)
        settled = True
        for path in paths:
            try:
                size = os.path.getsize(path)
            except OSError:
                size = 0
            if size == 0 or sizes.get(path) != size:
                settled = False
            sizes[path] = size
        if settled:
            return


__all__ = ["progress", "snapshot", "waits"]
