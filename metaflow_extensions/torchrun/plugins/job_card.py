"""The card section of one ``current.torch.run`` call, live while it runs.

With Metaflow's ``@card`` on the step (the ``default`` or ``blank`` type, or
any card that takes components: the step's default editable card), each call
appends its own section to the card: the job's layout and settings, a row per
rank (state, exit code or signal, wall time, last line), the root cause once
it failed, a timeline of rounds, restarts and each rank's life, and each
rank's last lines. Node 0's section shows every node's ranks; the other nodes'
show their own.

``JobCard.for_call`` returns None without such a card: then nothing here runs,
no thread starts, and the store sees no extra traffic. With one, a thread of
this module reads this node's attempt directories (``JobState.scan``),
carries ranks between nodes (``status_exchange``) and refreshes the card
(``current.card.refresh()``, which Metaflow limits to one refresh per
``@card(refresh_interval=...)``, 5 s by default). A change of a rank's state
re-renders the card, so Metaflow's client (``metaflow.cards.get_cards``,
``python flow.py card get``) sees it; new output lines only update the live
view (Metaflow UI, ``card server``).
"""

import contextlib
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from .job_state import (
    DONE,
    FAILED,
    RESTARTED,
    RUNNING,
    STARTING,
    STOPPED,
    JobState,
    Snapshot,
)
from .status_relay import TICK_SECONDS

if TYPE_CHECKING:
    from rendezvous.topology import Topology

    from .command import LaunchPlan
    from .exceptions import TorchrunFailed
    from .program import ArgsSpec
    from .status_exchange import StatusExchange
    from .step_settings import StepSettings

# Metaflow's own default of @card(refresh_interval=...).
_DEFAULT_REFRESH_SECONDS = 5.0
# How long a change of state waits for the changes that come with it (see _tick).
_SETTLE_SECONDS = 0.75
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


class JobCard:
    """This call's section of the step's card, and the thread that keeps it current.

    Use ``for_call``; then ``line`` for every line of the agent's output,
    ``start`` once the agent runs, and ``finish`` when it ended (or ``stop``
    if the call is interrupted).
    """

    def __init__(self, state: JobState, card: Any, card_uuid: str, refresh_seconds: float,
                 exchange_factory: Optional[Callable[[], "StatusExchange"]]):
        from metaflow.cards import Markdown, VegaChart

        self.state = state
        self._card = card
        self._card_uuid = card_uuid
        self._refresh_seconds = refresh_seconds
        self._exchange_factory = exchange_factory
        self._exchange: Optional["StatusExchange"] = None
        self._agent_running: Callable[[], bool] = lambda: False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torchrun-card", daemon=True)
        self._last_refresh = 0.0
        self._refreshed_version = -1
        self._rendered_states: Tuple[Any, ...] = ()
        self._unrendered_since: Optional[float] = None  # when a change of state was first seen
        snapshot = state.snapshot()
        now = time.time()
        self._layout = Markdown(_layout(snapshot))
        self._summary = Markdown(_summary(snapshot, now))
        self._table = Markdown(_rank_table(snapshot, now))
        self._root_cause = Markdown("")
        self._timeline = VegaChart(_timeline(snapshot, now))
        self._output = Markdown(_last_lines(snapshot))
        for component in (self._layout, self._summary, self._table, self._root_cause,
                          self._timeline, self._output):
            card.append(component)

    @classmethod
    def for_call(
        cls,
        call: int,
        plan: "LaunchPlan",
        topology: "Topology",
        settings: "StepSettings",
        entrypoint_args: "ArgsSpec",
    ) -> Optional["JobCard"]:
        """The section for this call, or None when the step has no card that takes components."""
        card, card_uuid, refresh_seconds = _editable_card()
        if card is None:
            return None
        state = JobState(
            call, plan, topology.node_index, topology.num_nodes,
            _settings_in_effect(plan, settings, entrypoint_args), plan.rdzv_endpoint,
        )

        def make_exchange() -> "StatusExchange":
            from rendezvous.endpoint import format_endpoint, store_address

            from .status_exchange import StatusExchange

            host, port = store_address(plan.rdzv_endpoint, plan.rdzv_id, topology)
            state.set_store_endpoint(format_endpoint(host, port))
            return StatusExchange(state, plan.rdzv_id, topology.num_nodes, host, port,
                                  lines_seconds=max(1.0, refresh_seconds))

        exchange_factory = make_exchange if topology.num_nodes > 1 else None
        return cls(state, card, card_uuid, refresh_seconds, exchange_factory)

    def line(self, text: str) -> None:
        """A line of the agent's output (worker lines carry their rank's prefix)."""
        self.state.line(text)

    def start(self, agent_running: Callable[[], bool]) -> "JobCard":
        """Start the thread; it starts the store relay only once ``agent_running()``."""
        self._agent_running = agent_running
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread's work on the card and the store relay; the card keeps what it showed."""
        self._stop.set()
        self._thread.join()
        if self._exchange is not None:
            self._exchange.close()

    def finish(self, returncode: int, failure: Optional["TorchrunFailed"]) -> None:
        """The agent ended: show the final state now (and keep it on a failed task's card).

        SIGINT waits until this returns (seconds at most): node 0 of a local
        run stops the other nodes with it when its own step failed, and that
        must not cut their last render short. After a failure it is dropped,
        since ``run`` raises the failure right after, which ends the step as
        well and says why.
        """
        with _interrupts_deferred(deliver=failure is None):
            self.stop()  # from here on, only this thread touches the card
            self.state.finish(returncode, failure)
            self._update(self.state.snapshot(), time.time())
            if failure is not None:
                # Metaflow renders a card at the end of a task only when the
                # task succeeded: the error is on the card only if we render
                # it, and before the task ends.
                _render_now(self._card)
            else:
                self._card.refresh(force=True)

    def _run(self) -> None:
        reported = ""
        while not self._stop.wait(TICK_SECONDS):
            try:
                self._tick()
            except Exception as error:  # noqa: BLE001 - the card must never fail the job
                message = f"[@torchrun card] not updated: {type(error).__name__}: {error}"
                if message != reported:  # once, not every tick
                    print(message, file=sys.stderr)
                    reported = message

    def _tick(self) -> None:
        self.state.scan()
        if self._exchange_factory is not None and self._agent_running():
            if self._exchange is None:
                self._exchange = self._exchange_factory()
            self._exchange.step()
        now = time.monotonic()
        if (self.state.version == self._refreshed_version
                or now - self._last_refresh < self._refresh_seconds
                or _card_process_running(self._card_uuid)):
            return
        snapshot = self.state.snapshot()
        if _render_key(snapshot) != self._rendered_states:
            # The ranks of all nodes start (and stop) within a moment of each
            # other, but reach this thread a tick or a relay hop apart. Each
            # forced render after the first holds this thread for two of
            # Metaflow's card processes (it runs a data refresh right after,
            # synchronously): seconds on a busy pod, during which no other
            # change can show. So a change is rendered _SETTLE_SECONDS after it
            # was seen, with whatever came with it.
            if self._unrendered_since is None:
                self._unrendered_since = now
            if now - self._unrendered_since < _SETTLE_SECONDS:
                return
        states = self._update(snapshot, time.time())
        # A changed state re-renders the card (what Metaflow's client fetches);
        # new lines alone only update the live view.
        self._card.refresh(force=states != self._rendered_states)
        self._rendered_states = states
        self._unrendered_since = None
        self._last_refresh = time.monotonic()

    def _update(self, snapshot: Snapshot, now: float) -> Tuple[Any, ...]:
        """Put ``snapshot`` into the components; return what a re-render depends on."""
        self._refreshed_version = snapshot.version
        self._layout.update(_layout(snapshot))
        self._summary.update(_summary(snapshot, now))
        self._table.update(_rank_table(snapshot, now))
        self._root_cause.update(_root_cause(snapshot))
        self._timeline.update(_timeline(snapshot, now))
        self._output.update(_last_lines(snapshot))
        return _render_key(snapshot)


def _render_key(snapshot: Snapshot) -> Tuple[Any, ...]:
    """What a re-render of the card depends on: a change of it is a change of state."""
    return (snapshot.store_endpoint, snapshot.failure is not None,
            tuple((rank.rank, rank.state, rank.restarts) for rank in snapshot.ranks))


def _editable_card() -> Tuple[Optional[Any], str, float]:
    """``current.card`` when the step has a card that takes components, that card's
    uuid, and its refresh interval."""
    from metaflow import current

    card = getattr(current, "card", None)  # present only in a step with @card
    if card is None:
        return None, "", 0.0
    # Metaflow 2.19 keeps the step's default editable card (the one that
    # current.card.append fills) and its attributes here.
    uuid = getattr(card, "_default_editable_card", None)
    if uuid is None:
        return None, "", 0.0
    meta = getattr(card, "_cards_meta", {}).get(uuid, {})
    return card, uuid, float(meta.get("refresh_interval") or _DEFAULT_REFRESH_SECONDS)


def _card_process_running(card_uuid: str) -> bool:
    """Whether Metaflow's card process (a render or a refresh) for this card still runs.

    Metaflow 2.19 silently drops a refresh asked for while one runs: a state
    change re-rendered then would not show until the next change. The process
    takes seconds (it starts Python and loads the flow), so asking again at
    the next tick after it ended shows the change as soon as Metaflow can.
    """
    try:
        from metaflow.plugins.cards.card_creator import CardProcessManager

        process, _ = CardProcessManager._get_card_process(card_uuid)
    except (ImportError, AttributeError):  # another Metaflow: refresh as asked
        return False
    return process is not None and process.poll() is None


@contextlib.contextmanager
def _interrupts_deferred(deliver: bool) -> Iterator[None]:
    """Hold SIGINT (in the main thread) until the block ends; then, if ``deliver``, act on it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and deliver:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def _render_now(card: Any) -> None:
    """Render the card's current components and wait until it is saved.

    ``current.card.refresh(force=True)`` may drop a render (at most one per
    refresh interval, and none while an earlier one runs), which at the end
    of a failed task would lose the root cause. Metaflow 2.19's manager of
    the editable card renders synchronously on request; without it (another
    Metaflow version), fall back to the public refresh.
    """
    manager = getattr(card, "_card_component_store", {}).get(
        getattr(card, "_default_editable_card", None)
    )
    render = getattr(manager, "_card_proc", None)
    if render is None:
        card.refresh(force=True)
        return
    render("render_runtime", sync=True)


def _settings_in_effect(plan: "LaunchPlan", settings: "StepSettings",
                        entrypoint_args: "ArgsSpec") -> Tuple[Tuple[str, str], ...]:
    entry = plan.entry
    flags = " ".join(f"--{name}" if value is None else f"--{name}={value}"
                     for name, value in plan.flags)
    return (
        ("entrypoint", f"{entry.kind} {entry.target}"),
        ("entrypoint_args", _short(repr(entrypoint_args)) if entrypoint_args else "none"),
        ("nproc_per_node", plan.nproc_per_node),
        ("torchrun_args", flags or "none"),
        ("rdzv_conf", ", ".join(f"{key}={value}" for key, value in plan.rdzv_conf)),
        ("log_dir", plan.log_dir),
        ("@torchrun", f"nproc_per_node={settings.nproc_per_node}, "
                      f"master_port={settings.master_port}, "
                      f"all_nodes_started_timeout={settings.join_timeout:g}"),
    )


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
            .replace("<", "&lt;").replace("\n", " ")) or " "


def _inline(text: str) -> str:
    """Text shown as written in a Markdown paragraph (wrapped, unlike a code block)."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", " ".join(text.split()))


def _fenced(lines: List[str]) -> str:
    fence = "```"
    while any(fence in line for line in lines):
        fence += "`"
    return "\n".join([fence, *lines, fence])


def _layout(snapshot: Snapshot) -> str:
    plan = snapshot.plan
    nproc = plan.nproc_per_node
    world = snapshot.num_nodes * int(nproc) if nproc.isdigit() else f"{snapshot.num_nodes} x auto"
    scope = ("every node and rank of the job" if snapshot.node_index == 0
             else f"the ranks of node {snapshot.node_index}; node 0's card shows the whole job")
    rows = [
        ("layout", f"{snapshot.num_nodes} nodes x {nproc} processes, world size {world}"),
        ("this card", f"node {snapshot.node_index}: {scope}"),
        ("rendezvous id", plan.rdzv_id),
        ("store endpoint", snapshot.store_endpoint),
        *snapshot.settings,
    ]
    table = "\n".join(f"| {_cell(name)} | {_cell(str(value))} |" for name, value in rows)
    return (f"## torchrun job, call {snapshot.call} of this step\n\n"
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
            f"| {_cell(rank.exit or '-')} | {'-' if wall is None else f'{wall:.1f} s'} "
            f"| {rank.restarts} | {_cell(_short(last, 120))} |"
        )
    return "### Ranks\n\n" + "\n".join(rows)


def _root_cause(snapshot: Snapshot) -> str:
    failure = snapshot.failure
    if failure is None:
        return ""
    failed = next((rank for rank in snapshot.ranks if rank.rank == snapshot.failed_rank), None)
    where = []
    if failed is not None:
        where.append(f"global rank {failed.rank} on node {failed.node} "
                     f"(local rank {failed.local_rank}), exit {failed.exit or 'unknown'}")
    elif failure.node_index is not None:
        where.append(f"node {failure.node_index}")
    text = f"### Root cause\n\n**{_cell(', '.join(where) or 'the job')}** failed first:\n\n"
    text += "> " + _inline(failure.summary)
    # The failure carries the failing rank's traceback: from its error file on
    # this node, or as its node recorded it with the failure in the store.
    # Else the one its node's card published, if that arrived before the end.
    tail = failure.traceback_tail or (
        failed.error if failed is not None and failed.error != failure.summary else ""
    )
    if tail:
        # Already its end: post_mortem and JobState keep the last lines.
        text += "\n\nEnd of its traceback:\n\n" + _fenced(tail.rstrip().splitlines())
    if failure.log_dir:
        text += f"\n\nThis node's per-rank logs: `{_cell(failure.log_dir)}`"
    return text


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


__all__ = ["JobCard"]
