"""What the card shows of the ranks' collectives: the hang report, and the stragglers.

Both come from this node's hang directory (``rendezvous.hangs``), where the
backend keeps its newest hang report (``report.json``, the same on every node)
and each worker's probe writes when it entered a sample of its recent
collectives (``arrivals`` in ``rank-<R>.json``). Node 0's card needs every
node's arrivals: the other nodes' come in their card payloads (``card.exchange``),
through ``JobState``. ``stragglers`` is pure.

A straggler is the rank the others wait for. For each collective every rank
reported, the last rank to enter it held the others up by at least the time
between its arrival and the one before; summed per rank over ``WINDOW_SECONDS``.
Arrival times are wall clocks: across machines, their offset adds to the figures.
"""

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from rendezvous.hangs.records import HangReport
from rendezvous.hangs.probe import REPORT_FILE, read_progress

# The stragglers are found over this much of the latest arrivals.
WINDOW_SECONDS = 300.0
# A rank that is last in at least this share of the collectives (and at least
# PERSISTENT_MIN_COLLECTIVES of them) is flagged as persistently last.
PERSISTENT_SHARE = 0.5
PERSISTENT_MIN_COLLECTIVES = 10

Arrival = Tuple[int, str, int]  # (restart round, process group, collective number)


@dataclass(frozen=True)
class Straggler:
    """How much one rank held the others up, over the window.

    Attributes:
        rank: the global rank.
        last: in how many collectives it arrived last.
        collectives: how many collectives every rank reported in the window.
        held_up: seconds the others waited for it, summed over those it was last in.
        persistent: whether it is last often enough to be flagged.
    """

    rank: int
    last: int
    collectives: int
    held_up: float
    persistent: bool


def stragglers(arrivals: Dict[int, Dict[Arrival, float]], world: Iterable[int]) -> List[Straggler]:
    """One row per rank that was last in some collective, most held-up time first.

    Args:
        arrivals: per global rank, when it entered each collective it reported.
        world: every global rank: only collectives all of them reported count.
    """
    ranks = sorted(set(world))
    if len(ranks) < 2 or any(rank not in arrivals for rank in ranks):
        return []
    common = set.intersection(*(set(arrivals[rank]) for rank in ranks))
    last_count: Dict[int, int] = {}
    held_up: Dict[int, float] = {}
    for collective in common:
        times = sorted((arrivals[rank][collective], rank) for rank in ranks)
        (before, _), (latest, last_rank) = times[-2], times[-1]
        last_count[last_rank] = last_count.get(last_rank, 0) + 1
        held_up[last_rank] = held_up.get(last_rank, 0.0) + (latest - before)
    total = len(common)
    rows = [
        Straggler(rank, count, total, held_up[rank],
                  total >= PERSISTENT_MIN_COLLECTIVES and count >= PERSISTENT_SHARE * total)
        for rank, count in last_count.items()
    ]
    return sorted(rows, key=lambda row: (-row.held_up, row.rank))


@dataclass(frozen=True)
class CollectivesSnapshot:
    """A copy for the card: the newest hang report (None before one) and the straggler rows."""

    hang: Optional[HangReport] = None
    stragglers: Tuple[Straggler, ...] = ()


class Collectives:
    """This node's view of the ranks' collectives; thread-safe, fed like ``JobState``.

    Args:
        hang_dir: this node's hang directory ("" without one: nothing to show).
        node_index: this node; node 0 merges the others' arrivals.
    """

    def __init__(self, hang_dir: str, node_index: int):
        self._hang_dir = hang_dir
        self._node = node_index
        self._lock = threading.Lock()
        self._report_stamp: Optional[float] = None
        self._hang: Optional[HangReport] = None
        self._arrivals: Dict[int, Dict[Arrival, float]] = {}
        self._own_ranks: List[int] = []

    def scan(self) -> Tuple[bool, bool]:
        """Read the hang directory. Returns whether anything changed, and whether the hang
        report's verdict or culprits did (a change of the card's state)."""
        if not self._hang_dir:
            return False, False
        report_changed = self._read_report()
        arrivals_changed = False
        own = []
        for name in _names(self._hang_dir):
            if name.startswith("rank-") and name.endswith(".json"):
                record = read_progress(os.path.join(self._hang_dir, name))
                if record is not None and "rank" in record:
                    own.append(int(record["rank"]))
                    arrivals_changed |= self._add(int(record["rank"]), record.get("arrivals") or ())
        with self._lock:
            self._own_ranks = sorted(own)
        return report_changed[0] or arrivals_changed, report_changed[1]

    def payload(self) -> Dict[str, Any]:
        """This node's ranks' latest arrivals, for node 0: ``{rank: [[group, seq, time, round]...]}``."""
        with self._lock:
            return {
                str(rank): [[group, seq, at, round_] for (round_, group, seq), at in
                            sorted(self._arrivals.get(rank, {}).items(), key=lambda item: item[1])
                            ][-64:]
                for rank in self._own_ranks
            }

    def merge(self, arrivals: Optional[Dict[str, Any]]) -> None:
        """Take another node's ``payload``."""
        for rank, items in (arrivals or {}).items():
            self._add(int(rank), items)

    def snapshot(self, world: Iterable[int]) -> CollectivesSnapshot:
        with self._lock:
            arrivals = {rank: dict(items) for rank, items in self._arrivals.items()}
            hang = self._hang
        return CollectivesSnapshot(hang, tuple(stragglers(arrivals, world)))

    def _read_report(self) -> Tuple[bool, bool]:
        path = os.path.join(self._hang_dir, REPORT_FILE)
        try:
            stamp = os.stat(path).st_mtime_ns
            if stamp == self._report_stamp:
                return False, False
            with open(path) as report_file:
                report = HangReport.from_dict(json.load(report_file))
        except (OSError, ValueError):
            return False, False
        with self._lock:
            previous, self._hang, self._report_stamp = self._hang, report, stamp
        return True, previous is None or previous.shape != report.shape

    def _add(self, rank: int, items: Iterable[Any]) -> bool:
        """Add ``[group, seq, time, round]`` items to ``rank``'s arrivals, dropping those past
        the window."""
        changed = False
        with self._lock:
            known = self._arrivals.setdefault(rank, {})
            for group, seq, at, round_ in items:
                key = (int(round_), str(group), int(seq))
                if key not in known:
                    known[key] = float(at)
                    changed = True
            if changed and known:
                newest = max(known.values())
                for key in [key for key, at in known.items() if at < newest - WINDOW_SECONDS]:
                    del known[key]
        return changed


def _names(directory: str) -> List[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


__all__ = ["Collectives", "CollectivesSnapshot", "Straggler", "stragglers"]
