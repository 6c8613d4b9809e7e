"""The records of hang diagnosis: a rank's position and stack, and the report made from them.

Frozen dataclasses, JSON both ways: node 0's ``watch`` gathers a ``RankSnapshot``
from every rank, ``diagnosis.diagnose`` makes a ``HangReport`` of them, which
travels as JSON (the store, the report file the card reads, a ``Failure`` of kind
``hung``) and is read back by ``HangReport.from_dict``; ``summary`` and
``details`` are for people only. Standard library only.
"""

from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, Dict, Iterable, List, Optional, Tuple

# The name torch gives the default process group.
DEFAULT_GROUP = "0"
# How many frames of a culprit's stack its record carries.
STACK_FRAMES = 12
# A rank whose probe has not run for this long holds the GIL (a long C call): its
# position is as of then, and it is not waiting in a collective (which releases the GIL).
PROBE_SILENT_SECONDS = 3.0


@dataclass(frozen=True)
class Frame:
    """One frame of a Python stack."""

    file: str
    line: int
    function: str

    @property
    def where(self) -> str:
        """``train.py:40 in prepare``: the file's name, not its whole path."""
        return f"{self.file.rsplit('/', 1)[-1]}:{self.line} in {self.function}"


@dataclass(frozen=True)
class GroupPosition:
    """Where one rank is in the collectives of one process group.

    Attributes:
        group: the group's name (``"0"`` is the default group).
        ranks: the global ranks of its members; empty when unknown (every rank).
        entered, completed: the sequence numbers of the last collective the rank
            entered and of the last it completed (0 for none).
        op: the operation of the last one entered (``"all_reduce"``).
        waited: how long it has been in that one, as of the snapshot (0 unless waiting).
    """

    group: str
    ranks: Tuple[int, ...]
    entered: int
    completed: int
    op: str
    waited: float = 0.0

    @property
    def waiting(self) -> bool:
        return self.entered > self.completed


@dataclass(frozen=True)
class RankSnapshot:
    """One rank as its node saw it when node 0 asked.

    Attributes:
        node, rank, local_rank: where the rank runs and its global and local rank.
        groups: its position in each process group; empty before it joins one.
        positions_known: False where its torch has no flight recorder for its backend.
        where: the innermost frame of the user's code on its main thread, if found.
        stack: its main thread's frames, most recent call first (at most ``STACK_FRAMES``).
        threads: every thread's stack as faulthandler wrote it ("" if none came).
        probe_silent: seconds since its probe last ran (its file's time).
    """

    node: int
    rank: int
    local_rank: int
    groups: Tuple[GroupPosition, ...] = ()
    positions_known: bool = True
    where: Optional[Frame] = None
    stack: Tuple[Frame, ...] = ()
    threads: str = ""
    probe_silent: float = 0.0

    @property
    def holds_gil(self) -> bool:
        """Whether its probe stopped: a C call holds the GIL, and its position is stale.

        Not where its position is unknown: a probe that cannot read a flight recorder ends.
        """
        return self.positions_known and self.probe_silent >= PROBE_SILENT_SECONDS

    def group(self, name: str) -> Optional[GroupPosition]:
        return next((group for group in self.groups if group.group == name), None)

    @property
    def position(self) -> str:
        """Where it is in its collectives, in words: ``in barrier #3 for 612 s``."""
        if not self.positions_known:
            return "position unknown (no flight recorder on its torch)"
        if self.holds_gil:
            return (f"in a call that has held the GIL for {self.probe_silent:.0f} s (a long C "
                    f"call, not a collective)")
        waiting = [group for group in self.groups if group.waiting]
        if waiting:
            return "; ".join(
                f"in {collective_name(g.op, g.entered, g.group)} for {g.waited:.0f} s" for g in waiting
            )
        done = [group for group in self.groups if group.completed]
        if not done:
            return "not in a collective"
        return "not in a collective (last completed: " + ", ".join(
            collective_name(g.op, g.completed, g.group) for g in done
        ) + ")"


class Verdict(str, Enum):
    """What a diagnosis found."""

    CULPRITS = "culprits"  # ranks wait for others that have not entered their collective
    TRANSPORT = "transport"  # every member waits in the same collective: the link, not a rank
    NONE = "none"  # no rank has waited in a collective for hang_timeout


@dataclass(frozen=True)
class Wait:
    """Ranks that have waited in the same collective for at least ``hang_timeout``.

    Attributes:
        group, seq, op: the collective (process group, sequence number, operation).
        ranks: the global ranks waiting in it.
        waited: the longest of their waits, in seconds.
        where: where the first of them called it, in the user's code.
    """

    group: str
    seq: int
    op: str
    ranks: Tuple[int, ...]
    waited: float
    where: Optional[Frame] = None

    @property
    def collective(self) -> str:
        return collective_name(self.op, self.seq, self.group)


@dataclass(frozen=True)
class Culprit:
    """A rank the waiting ranks wait for.

    Attributes:
        node, rank, local_rank: where it runs and its ranks.
        wait: the collective the others wait in, for it.
        position: where it is in its collectives, in words; says so when its node did not answer.
        where: the innermost frame of the user's code on its main thread, if known.
        stack: its main thread's frames, most recent call first.
    """

    node: Optional[int]
    rank: int
    local_rank: Optional[int]
    wait: Wait
    position: str
    where: Optional[Frame] = None
    stack: Tuple[Frame, ...] = ()

    @property
    def name(self) -> str:
        node = "node ?" if self.node is None else f"node {self.node}"
        local = "" if self.local_rank is None else f", local rank {self.local_rank}"
        return f"rank {self.rank} ({node}{local})"


@dataclass(frozen=True)
class HangReport:
    """What node 0 found when it gathered every rank.

    Attributes:
        verdict: culprits, a transport hang, or no hang.
        waits: the collectives ranks have waited in for at least ``hang_timeout``.
        culprits: the ranks those wait for (``Verdict.CULPRITS``), in rank order.
        ranks: every rank gathered, in rank order.
        silent_nodes: nodes that did not answer node 0 in time.
        hung_for: how long the job has been reported hung (0 in the first report).
        time: when node 0 made it (``time.time()`` on node 0).
    """

    verdict: Verdict
    waits: Tuple[Wait, ...] = ()
    culprits: Tuple[Culprit, ...] = ()
    ranks: Tuple[RankSnapshot, ...] = ()
    silent_nodes: Tuple[int, ...] = ()
    hung_for: float = 0.0
    time: float = 0.0

    @property
    def hung(self) -> bool:
        return self.verdict != Verdict.NONE

    @property
    def shape(self) -> Tuple[object, ...]:
        """What the report says, without how long: equal for reports of the same hang."""
        return (self.verdict, tuple((w.group, w.seq, w.op, w.ranks) for w in self.waits),
                tuple((c.rank, c.position) for c in self.culprits), self.silent_nodes)

    @property
    def summary(self) -> str:
        """One line for people: who waits where, for whom, and where that one is."""
        if not self.waits:
            return "no rank waits in a collective any more"
        parts = []
        for wait in self.waits:
            head = (f"{_ranks(wait.ranks)} {'has' if len(wait.ranks) == 1 else 'have'} waited "
                    f"{wait.waited:.0f} s in {wait.collective}{_at(wait.where)}")
            culprits = [culprit for culprit in self.culprits if culprit.wait == wait]
            if culprits:
                parts.append(head + " for " + "; ".join(
                    f"{culprit.name}, which is {_at(culprit.where, 'at ', ', ')}{culprit.position}"
                    for culprit in culprits
                ))
            elif self.verdict == Verdict.TRANSPORT:
                parts.append(head)
        text = "; ".join(parts)
        if self.verdict == Verdict.TRANSPORT:
            text += (": every rank is inside a collective and none is missing from one, so no "
                     "rank is behind: a transport hang (a cut link, a stuck network card or driver)")
        return text

    def details(self) -> List[str]:
        """The summary, then each culprit's main-thread stack, for a log."""
        lines = [self.summary]
        for culprit in self.culprits:
            if culprit.stack:
                lines.append(f"{culprit.name}, main thread (most recent call first):")
                lines.extend(f"    {frame.file}:{frame.line} in {frame.function}"
                             for frame in culprit.stack)
        if self.silent_nodes:
            lines.append(f"nodes that did not answer: {', '.join(map(str, self.silent_nodes))}")
        return lines

    def without_threads(self) -> "HangReport":
        """This report without every thread's dump of each rank: small enough for a failure record."""
        return replace(self, ranks=tuple(replace(rank, threads="") for rank in self.ranks))

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "HangReport":
        """The record ``to_dict`` made.

        Raises:
            ValueError: ``data`` is not a hang report.
        """
        try:
            return cls(
                verdict=Verdict(data["verdict"]),
                waits=tuple(_wait(item) for item in data.get("waits", ())),
                culprits=tuple(
                    Culprit(
                        node=item.get("node"), rank=int(item["rank"]),
                        local_rank=item.get("local_rank"), wait=_wait(item["wait"]),
                        position=str(item.get("position", "")), where=_frame(item.get("where")),
                        stack=_frames(item.get("stack", ())),
                    )
                    for item in data.get("culprits", ())
                ),
                ranks=tuple(snapshot_from_dict(item) for item in data.get("ranks", ())),
                silent_nodes=tuple(int(node) for node in data.get("silent_nodes", ())),
                hung_for=float(data.get("hung_for", 0.0)),
                time=float(data.get("time", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not a hang report: {error}") from None


def snapshot_from_dict(data: Dict[str, Any]) -> RankSnapshot:
    """A ``RankSnapshot`` from its ``asdict`` form (JSON).

    Raises:
        KeyError, TypeError, ValueError: ``data`` is not one.
    """
    return RankSnapshot(
        node=int(data["node"]),
        rank=int(data["rank"]),
        local_rank=int(data["local_rank"]),
        groups=tuple(
            GroupPosition(
                group=str(item["group"]), ranks=tuple(int(rank) for rank in item.get("ranks", ())),
                entered=int(item["entered"]), completed=int(item["completed"]),
                op=str(item.get("op", "")), waited=float(item.get("waited", 0.0)),
            )
            for item in data.get("groups", ())
        ),
        positions_known=bool(data.get("positions_known", True)),
        where=_frame(data.get("where")),
        stack=_frames(data.get("stack", ())),
        threads=str(data.get("threads", "")),
        probe_silent=float(data.get("probe_silent", 0.0)),
    )


def collective_name(op: str, seq: int, group: str) -> str:
    name = f"{op or 'collective'} #{seq}"
    return name if group == DEFAULT_GROUP else f"{name} of group {group}"


def _at(frame: Optional[Frame], before: str = " at ", after: str = "") -> str:
    """``frame``'s place between ``before`` and ``after``; "" without a frame."""
    return "" if frame is None else f"{before}{frame.where}{after}"


def _ranks(ranks: Iterable[int]) -> str:
    """``rank 2``, ``ranks 1-3``, ``ranks 0, 2, 5-7``."""
    ordered = sorted(set(ranks))
    spans: List[List[int]] = []
    for rank in ordered:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ", ".join(f"{low}" if low == high else f"{low}-{high}" for low, high in spans)
    return f"rank {text}" if len(ordered) == 1 else f"ranks {text}"


def _frame(data: Optional[Dict[str, Any]]) -> Optional[Frame]:
    return None if not data else Frame(str(data["file"]), int(data["line"]), str(data["function"]))


def _frames(items: Iterable[Dict[str, Any]]) -> Tuple[Frame, ...]:
    return tuple(Frame(str(item["file"]), int(item["line"]), str(item["function"])) for item in items)


def _wait(data: Dict[str, Any]) -> Wait:
    return Wait(
        group=str(data["group"]), seq=int(data["seq"]), op=str(data["op"]),
        ranks=tuple(int(rank) for rank in data["ranks"]), waited=float(data["waited"]),
        where=_frame(data.get("where")),
    )


__all__ = [
    "DEFAULT_GROUP", "PROBE_SILENT_SECONDS", "STACK_FRAMES", "Culprit", "Frame", "GroupPosition",
    "HangReport", "RankSnapshot", "Verdict", "Wait", "collective_name", "snapshot_from_dict",
]
