"""From every rank's position to a verdict: which ranks hold the others up, or none.

Pure: records in (``records.RankSnapshot``), a record out (``records.HangReport``),
no clock, store or process; node 0's ``watch`` calls ``diagnose``.

Positions come from torch's flight recorder: per process group, the sequence
number of the last collective a rank entered and of the last one it
completed. Collective number ``s`` of a group is the same collective on every
member, so a member that waits in ``s`` waits for the members that have not
entered ``s`` (or entered another op as ``s``: a skipped collective).
"""

from typing import Dict, Iterable, List, Optional, Tuple

from .records import (
    Culprit,
    GroupPosition,
    HangReport,
    RankSnapshot,
    Verdict,
    Wait,
    collective_name,
)


def diagnose(
    ranks: Iterable[RankSnapshot],
    hang_timeout: float,
    world: Iterable[int] = (),
    silent_nodes: Iterable[int] = (),
    hung_for: float = 0.0,
    time: float = 0.0,
) -> HangReport:
    """The verdict on ``ranks``, every rank node 0 could gather.

    Args:
        ranks: one snapshot per rank that answered.
        hang_timeout: how long a rank must have waited in a collective to count.
        world: every global rank of the job, to name a rank that did not answer.
        silent_nodes: the nodes that did not answer.
        hung_for, time: copied into the report.
    """
    snapshots = sorted(ranks, key=lambda snapshot: snapshot.rank)
    by_rank = {snapshot.rank: snapshot for snapshot in snapshots}
    everyone = sorted(set(world) | set(by_rank))
    waits = _long_waits(snapshots, hang_timeout)
    culprits: List[Culprit] = []
    for wait in waits:
        group_ranks = _members(snapshots, wait.group) or everyone
        for rank in group_ranks:
            if rank in wait.ranks:
                continue
            snapshot = by_rank.get(rank)
            culprit = _culprit(snapshot, rank, wait)
            if culprit is not None:
                culprits.append(culprit)
    if not waits:
        verdict = Verdict.NONE
    elif culprits:
        verdict = Verdict.CULPRITS
    else:
        verdict = Verdict.TRANSPORT
    return HangReport(
        verdict=verdict,
        waits=tuple(waits),
        culprits=tuple(sorted(culprits, key=lambda culprit: (culprit.rank, culprit.wait.seq))),
        ranks=tuple(snapshots),
        silent_nodes=tuple(sorted(set(silent_nodes))),
        hung_for=hung_for,
        time=time,
    )


def _long_waits(snapshots: List[RankSnapshot], hang_timeout: float) -> List[Wait]:
    """The collectives ranks have waited in for ``hang_timeout``, one ``Wait`` each."""
    found: Dict[Tuple[str, int, str], List[Tuple[RankSnapshot, GroupPosition]]] = {}
    for snapshot in snapshots:
        for group in snapshot.groups:
            if group.waiting and group.waited >= hang_timeout and not snapshot.holds_gil:
                found.setdefault((group.group, group.entered, group.op), []).append((snapshot, group))
    # Ranks in another op than the most ranks are in, under the same number, skipped a
    # collective (or called one the others did not): they are culprits, not a wait.
    most = {}
    for (name, seq, op), members in found.items():
        most[(name, seq)] = max(most.get((name, seq), 0), len(members))
    waits = []
    for (name, seq, op), members in sorted(found.items()):
        if len(members) < most[(name, seq)]:
            continue
        waits.append(Wait(
            group=name, seq=seq, op=op,
            ranks=tuple(snapshot.rank for snapshot, _ in members),
            waited=max(group.waited for _, group in members),
            where=next((snapshot.where for snapshot, _ in members if snapshot.where), None),
        ))
    return waits


def _members(snapshots: List[RankSnapshot], name: str) -> List[int]:
    """The global ranks of group ``name``, as its members know them; [] when none said."""
    for snapshot in snapshots:
        group = snapshot.group(name)
        if group is not None and group.ranks:
            return sorted(group.ranks)
    return []


def _culprit(snapshot: Optional[RankSnapshot], rank: int, wait: Wait) -> Optional[Culprit]:
    """``rank`` as a culprit of ``wait``, or None when it is in ``wait``, past it, or stuck in
    an earlier collective of the same group (which the others completed: the transport's
    fault, or a culprit of that collective's own)."""
    if snapshot is None:
        return Culprit(node=None, rank=rank, local_rank=None, wait=wait,
                       position="did not answer: its node is unreachable or its probe never started")
    group = snapshot.group(wait.group)
    if not snapshot.positions_known:
        position = snapshot.position
    elif group is not None and group.waiting and group.entered < wait.seq and not snapshot.holds_gil:
        return None
    elif group is None or group.entered < wait.seq:
        position = snapshot.position
    elif group.entered == wait.seq and group.op != wait.op:
        position = (f"in {collective_name(group.op, group.entered, group.group)} where the others "
                    f"are in {wait.op}: a skipped or mismatched collective")
    else:
        return None
    return Culprit(node=snapshot.node, rank=rank, local_rank=snapshot.local_rank, wait=wait,
                   position=position, where=snapshot.where, stack=snapshot.stack)


__all__ = ["diagnose"]
