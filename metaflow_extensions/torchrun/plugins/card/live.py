"""The card section of one ``current.torch.run`` call, live while it runs: its life cycle.

With Metaflow's ``@card`` on the step (the ``default`` or ``blank`` type, or
any card that takes components: the step's default editable card), each call
appends its own section to the card: the job's layout and settings, a row per
rank (state, exit code or signal, wall time, last line), the root cause once
it failed, the hang report while the job is hung (``rendezvous.hangs``), the
ranks that made the others wait at collectives (``card.collectives``), a timeline of rounds, restarts and each rank's life, and each
rank's last lines (``card.render`` draws them from ``card.state``). Node 0's
section shows every node's ranks; the other nodes' show their own.

``JobCard.for_call`` returns None without such a card: then nothing here runs,
no thread starts, and the store sees no extra traffic. With one, a thread of
this module reads this node's attempt directories (``JobState.scan``),
carries ranks between nodes (``card.exchange``) and refreshes the card
(``current.card.refresh()``, which Metaflow limits to one refresh per
``@card(refresh_interval=...)``, 5 s by default). A change of a rank's state
re-renders the card, so Metaflow's client (``metaflow.cards.get_cards``,
``python flow.py card get``) sees it; new output lines only update the live
view (Metaflow UI, ``card server``).
"""

import contextlib
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

from rendezvous.outcome import say

from ..launch.command import whole_number
from ..metaflow_compat import card_process_running, editable_card, render_card_now
from .relay import TICK_SECONDS
from .render import Sections, render, render_key, shorten
from .state import CallLayout, JobState, Snapshot

if TYPE_CHECKING:
    from rendezvous.topology import Topology

    from ..errors import TorchrunFailed
    from ..launch.command import LaunchPlan
    from ..launch.program import ArgsSpec
    from ..launch.settings import StepSettings
    from .exchange import StatusExchange

# How long a change of state waits for the changes that come with it (see _tick).
_SETTLE_SECONDS = 0.75


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
        sections = render(state.snapshot(), time.time())
        # One component per part of the section, in the order of Sections.
        self._components = Sections(*(
            VegaChart(part) if name == "timeline" else Markdown(part)
            for name, part in zip(Sections._fields, sections)
        ))
        for component in self._components:
            card.append(component)

    @classmethod
    def for_call(
        cls,
        call: int,
        plan: "LaunchPlan",
        topology: "Topology",
        settings: "StepSettings",
        entrypoint_args: "ArgsSpec",
        hang_dir: str = "",
    ) -> Optional["JobCard"]:
        """The section for this call, or None when the step has no card that takes components.

        ``hang_dir`` is where the backend keeps its hang report and the ranks' progress.
        """
        card, card_uuid, refresh_seconds = editable_card()
        if card is None:
            return None
        layout = CallLayout(
            call=call, node_index=topology.node_index, num_nodes=topology.num_nodes,
            nproc_per_node=plan.nproc_per_node, nproc=whole_number(plan.nproc_per_node),
            rdzv_id=plan.rdzv_id, log_dir=plan.log_dir, hang_dir=hang_dir,
        )
        state = JobState(layout, _settings_in_effect(plan, settings, entrypoint_args),
                         plan.rdzv_endpoint)

        def make_exchange() -> "StatusExchange":
            from rendezvous.endpoint import format_endpoint, store_address

            from .exchange import StatusExchange

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

    def finish(self, failure: Optional["TorchrunFailed"]) -> None:
        """The agent ended: show the final state now (and keep it on a failed task's card).

        SIGINT waits until this returns (seconds at most): node 0 of a local
        run stops the other nodes with it when its own step failed, and that
        must not cut their last render short. After a failure it is dropped,
        since ``run`` raises the failure right after, which ends the step as
        well and says why.
        """
        with _interrupts_deferred(deliver=failure is None):
            self.stop()  # from here on, only this thread touches the card
            self.state.finish(None if failure is None else failure.failure)
            self._update(self.state.snapshot(), time.time())
            if failure is not None:
                # Metaflow renders a card at the end of a task only when the
                # task succeeded: the error is on the card only if we render
                # it, and before the task ends.
                render_card_now(self._card)
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
                    say(message)
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
                or card_process_running(self._card_uuid)):
            return
        snapshot = self.state.snapshot()
        if render_key(snapshot) != self._rendered_states:
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
        for component, part in zip(self._components, render(snapshot, now)):
            component.update(part)
        return render_key(snapshot)


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


def _settings_in_effect(plan: "LaunchPlan", settings: "StepSettings",
                        entrypoint_args: "ArgsSpec") -> Tuple[Tuple[str, str], ...]:
    entry = plan.entry
    flags = " ".join(f"--{name}" if value is None else f"--{name}={value}"
                     for name, value in plan.flags)
    return (
        ("entrypoint", f"{entry.kind} {entry.target}"),
        ("entrypoint_args", shorten(repr(entrypoint_args)) if entrypoint_args else "none"),
        ("nproc_per_node", plan.nproc_per_node),
        ("torchrun_args", flags or "none"),
        ("rdzv_conf", ", ".join(f"{key}={value}" for key, value in plan.rdzv_conf)),
        ("log_dir", plan.log_dir),
        ("@torchrun", f"nproc_per_node={settings.nproc_per_node}, "
                      f"master_port={settings.master_port}, "
                      f"all_nodes_started_timeout={settings.join_timeout:g}"),
    )


__all__ = ["JobCard"]
