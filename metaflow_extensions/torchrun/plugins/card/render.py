"""The card section of one call, rendered from a ``Snapshot``: pure functions, no Metaflow.

``render`` turns a snapshot into the section's parts (Markdown text and one
Vega-Lite chart), which ``card.live`` puts into Metaflow's card components;
``render_key`` is what a re-render depends on. Tested without Metaflow.
"""

import html
import re
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from rendezvous.failure import FailureKind
from rendezvous.hangs.records import HangReport, Verdict

from .collectives import Straggler
from .ranks import (
    DONE,
    FAILED,
    RESTARTED,
    RUNNING,
    STARTING,
    STOPPED,
    exit_text,
    is_failing_rank,
)
from .state import Snapshot

_STATE_COLORS = {
    STARTING: "#b0b7c3",
    RUNNING: "#3b82f6",
    DONE: "#22a06b",
    FAILED: "#e5484d",
    STOPPED: "#f5a524",
    RESTARTED: "#8e4ec6",
}
_STATE_MARKS = {
    STARTING: "○ starting",
    RUNNING: "▶ running",
    DONE: "✔ done",
    FAILED: "✖ failed",
    STOPPED: "■ stopped",
    RESTARTED: "↻ restarted",
}


class Sections(NamedTuple):
    """The parts of one call's card section, in the order the card shows them.

    A part that ends with a quote (``_quote``) stops there and the next part
    goes on: Metaflow's card renders nothing after an HTML block, not even the
    next components, unless that block ends its component.
    """

    layout: str
    summary: str
    rank_table: str
    root_cause: str
    root_cause_details: str
    hang: str
    hang_details: str
    stragglers: str
    timeline: Dict[str, Any]
    last_lines: str


def render(snapshot: Snapshot, now: float) -> Sections:
    """Every part of the section for ``snapshot``, with running times up to ``now``."""
    root_cause, root_cause_details = _root_cause(snapshot)
    hang, hang_details = _hang(snapshot.collectives.hang, moved_on=snapshot.ended is not None
                               and snapshot.failure is None)
    return Sections(
        layout=_layout(snapshot),
        summary=_summary(snapshot, now),
        rank_table=_rank_table(snapshot, now),
        root_cause=root_cause,
        root_cause_details=root_cause_details,
        hang=hang,
        hang_details=hang_details,
        stragglers=_stragglers(snapshot.collectives.stragglers),
        timeline=_timeline(snapshot, now),
        last_lines=_last_lines(snapshot),
    )


def render_key(snapshot: Snapshot) -> Tuple[Any, ...]:
    """What a re-render of the card depends on: a change of it is a change of state."""
    hang = snapshot.collectives.hang
    return (snapshot.store_endpoint, snapshot.failure is not None,
            tuple((rank.rank, rank.state, rank.restarts) for rank in snapshot.ranks),
            None if hang is None else hang.shape)


def shorten(text: str, limit: int = 160) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _code(text: str, cell: bool = True) -> str:
    """``text`` shown exactly as written, as an inline code span (one line).

    Metaflow's card renderer drops Markdown's backslash escapes, so text that
    may hold ``_``, ``*``, ``<`` or a backtick (a rank's output, a path, a
    stack frame) goes in a code span, where nothing is Markdown (that renderer
    drops the backticks inside one, though). ``cell``: it goes in a table
    cell, where a ``|`` must still be escaped.
    """
    text = str(text).replace("\r", " ").replace("\n", " ") or " "
    if cell:
        text = text.replace("|", "\\|")
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _quote(text: str) -> str:
    """``text`` as a block quote, wrapped and shown as written.

    An HTML block, which Metaflow's renderer shows as is, since it drops Markdown's
    backslash escapes. It must end its part of ``Sections`` (see there), after a blank line.
    """
    return f"<blockquote>{html.escape(' '.join(text.split()), quote=False)}</blockquote>"


def _fenced(lines: List[str]) -> str:
    fence = "```"
    while any(fence in line for line in lines):
        fence += "`"
    return "\n".join([fence, *lines, fence])


def _layout(snapshot: Snapshot) -> str:
    layout = snapshot.layout
    nproc = layout.nproc_per_node
    world = (layout.num_nodes * layout.nproc if layout.nproc is not None
             else f"{layout.num_nodes} x auto")
    scope = ("every node and rank of the job" if layout.node_index == 0
             else f"the ranks of node {layout.node_index}; node 0's card shows the whole job")
    rows = [
        ("layout", f"{layout.num_nodes} nodes x {nproc} processes, world size {world}", True),
        ("this card", f"node {layout.node_index}: {scope}", True),
        ("rendezvous id", layout.rdzv_id, False),
        ("store endpoint", snapshot.store_endpoint, False),
        *((name, value, False) for name, value in snapshot.settings),
    ]
    table = "\n".join(f"| {name} | {value if prose else _code(value)} |"
                      for name, value, prose in rows)
    return (f"## torchrun job, call {layout.call} of this step\n\n"
            f"| | |\n| --- | --- |\n{table}")


def _summary(snapshot: Snapshot, now: float) -> str:
    counts: Dict[str, int] = {}
    for rank in snapshot.ranks:
        counts[rank.state] = counts.get(rank.state, 0) + 1
    if snapshot.ended is None:
        verdict = "running"
    else:
        verdict = "failed" if snapshot.failure is not None else "succeeded"
    elapsed = (snapshot.ended or now) - snapshot.started
    parts = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return f"**Job {verdict}** after {elapsed:.1f} s: {parts or 'no rank started yet'}."


def _rank_table(snapshot: Snapshot, now: float) -> str:
    rows = ["| rank | local rank | node | state | exit | wall time | restarts | last line |",
            "| ---: | ---: | ---: | --- | --- | ---: | ---: | --- |"]
    for rank in snapshot.ranks:
        wall = rank.wall_time(now)
        last = rank.lines[-1] if rank.lines else ""
        rows.append(
            f"| {rank.rank} | {rank.local_rank} | {rank.node} | {_STATE_MARKS[rank.state]} "
            f"| {rank.exit or '-'} | {'-' if wall is None else f'{wall:.1f} s'} "
            f"| {rank.restarts} | {_code(shorten(last, 120)) if last else ''} |"
        )
    return "### Ranks\n\n" + "\n".join(rows)


def _root_cause(snapshot: Snapshot) -> Tuple[str, str]:
    """What failed first, in words (ending with its quote); then its traceback and logs."""
    failure = snapshot.failure
    if failure is None:
        return "", ""
    failed = next((rank for rank in snapshot.ranks if is_failing_rank(rank, failure)), None)
    # A culprit of a hang did not fail: it held the others up, and has no exit of its own
    # (the job was stopped for it).
    hung = failure.kind is FailureKind.HUNG
    exit_words = "" if hung else f", exit {exit_text(failure) or 'unknown'}"
    if failure.rank is not None:
        where = (f"global rank {failure.rank} on node {failure.node_index} "
                 f"(local rank {failure.local_rank}){exit_words}")
    elif failure.local_rank is not None:
        where = f"local rank {failure.local_rank} on node {failure.node_index}{exit_words}"
    elif failure.node_index is not None:
        where = f"node {failure.node_index}"
    else:
        where = "the job"
    verb = "held the job up" if hung else "failed first"
    head = f"### Root cause\n\n**{where}** {verb}:\n\n" + _quote(failure.summary)
    details = ""
    # The failure carries the failing rank's traceback: from its error file on
    # this node, or as its node recorded it with the failure in the store.
    # Else the one its node's card published, if that arrived before the end.
    tail = failure.traceback_tail or (
        failed.error if failed is not None and failed.error != failure.summary else ""
    )
    if tail:
        # Already its end: every failure record and JobState keep the last lines.
        details = "End of its traceback:\n\n" + _fenced(tail.rstrip().splitlines()) + "\n\n"
    details += f"This node's per-rank logs: {_code(snapshot.layout.log_dir, cell=False)}"
    return head, details


def _hang(report: Optional[HangReport], moved_on: bool) -> Tuple[str, str]:
    """The newest hang report: who waits where, for whom (ending with that quote); then
    each culprit's row and stack.

    ``moved_on``: the job succeeded since (before a newer report could say the wait was over).
    """
    if report is None:
        return "", ""
    at = time.strftime("%H:%M:%S", time.localtime(report.time))
    if not report.hung or moved_on:
        return (f"### Hang\n\nThe job was reported hung; as of {at} no rank waits any more."
                if not report.hung else
                f"### Hang\n\nThe job was reported hung as of {at}, then moved on and "
                f"succeeded:\n\n{_quote(report.summary)}"), ""
    hung_for = f", hung for {report.hung_for:.0f} s" if report.hung_for else ""
    kind = "transport hang" if report.verdict == Verdict.TRANSPORT else "hung"
    head = f"### Hang\n\n**Job {kind}** (as of {at}{hung_for}):\n\n{_quote(report.summary)}"
    text = ""
    if report.culprits:
        rows = ["| culprit rank | node | local rank | where | position |",
                "| ---: | ---: | ---: | --- | --- |"]
        for culprit in report.culprits:
            rows.append(
                f"| {culprit.rank} | {'?' if culprit.node is None else culprit.node} "
                f"| {'?' if culprit.local_rank is None else culprit.local_rank} "
                f"| {_code(culprit.where.where) if culprit.where else '-'} "
                f"| {_code(culprit.position)} |"
            )
        text += "\n".join(rows)
        for culprit in report.culprits:
            if culprit.stack:
                text += (f"\n\n**rank {culprit.rank}**, main thread (most recent call first):\n\n"
                         + _fenced([f"{frame.file}:{frame.line} in {frame.function}"
                                    for frame in culprit.stack]))
    return head, text


def _stragglers(rows: Tuple[Straggler, ...]) -> str:
    """How long the others waited for each rank at collectives, over the last minutes."""
    if not rows:
        return ""
    lines = ["| rank | last to arrive | others waited for it | |", "| ---: | ---: | ---: | --- |"]
    for row in rows:
        flag = "**persistently last**" if row.persistent else ""
        lines.append(f"| {row.rank} | {row.last} of {row.collectives} | {row.held_up:.2f} s "
                     f"| {flag} |")
    return ("### Stragglers\n\nOver the last minutes of sampled collectives: how often each rank "
            "entered a collective last, and how long the others waited for it there.\n\n"
            + "\n".join(lines))


def _timeline(snapshot: Snapshot, now: float) -> Dict[str, Any]:
    """A Vega-Lite chart: a bar per attempt of each rank, a rule per round of this node."""
    bars = []
    for rank in snapshot.ranks:
        label = f"rank {rank.rank} (node {rank.node})"
        for segment in rank.segments:
            bars.append({
                "rank": label,
                "order": rank.rank,
                "start": round(segment.start - snapshot.started, 2),
                "end": round((segment.end or snapshot.ended or now) - snapshot.started, 2),
                "state": segment.outcome,
                "attempt": segment.attempt,
            })
    rounds = [{"at": round(at - snapshot.started, 2), "round": f"attempt {attempt}"}
              for at, attempt in snapshot.rounds]
    states = list(_STATE_COLORS)
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Timeline (seconds since this node started the call)",
        "height": {"step": 22},
        "layer": [
            {
                "data": {"values": bars},
                "mark": {"type": "bar", "cornerRadius": 3},
                "encoding": {
                    "y": {"field": "rank", "type": "nominal", "title": None,
                          "sort": {"field": "order"}},
                    "x": {"field": "start", "type": "quantitative", "title": "seconds"},
                    "x2": {"field": "end"},
                    "color": {"field": "state", "type": "nominal", "title": "state",
                              "scale": {"domain": states,
                                        "range": [_STATE_COLORS[s] for s in states]}},
                    "tooltip": [{"field": "rank"}, {"field": "attempt"}, {"field": "state"},
                                {"field": "start"}, {"field": "end"}],
                },
            },
            {
                "data": {"values": rounds},
                "mark": {"type": "rule", "strokeDash": [4, 3], "color": "#6b7280"},
                "encoding": {"x": {"field": "at", "type": "quantitative"},
                             "tooltip": [{"field": "round"}, {"field": "at"}]},
            },
        ],
    }


def _last_lines(snapshot: Snapshot) -> str:
    blocks = []
    for rank in snapshot.ranks:
        if rank.lines:
            blocks.append(f"**rank {rank.rank}**\n\n" + _fenced(list(rank.lines)))
    if not blocks:
        return "### Last lines\n\nNo output yet."
    return "### Last lines\n\n" + "\n\n".join(blocks)


__all__ = ["Sections", "render", "render_key", "shorten"]
