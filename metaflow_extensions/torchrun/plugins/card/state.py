"""The per-rank state of one ``current.torch.run`` call, as this task sees it.

One ``JobState`` per call, made only when the step has a card (see
``card.live``). The launcher feeds it: every worker line the log pump copies
(``line``), this node's attempt directories and error files (``scan``, which
reads them through ``worker.files``), and how the agent ended (``finish``,
with the failure record). The other nodes' ranks come in as the payloads
their own ``JobState.payload`` made (``merge``), carried through node 0's
store by ``card.exchange``. Readers take a consistent copy with ``snapshot``.
Nothing here imports Metaflow: the card's rendering (``card.render``) and this
model are tested without it.

Times are wall-clock seconds (``time.time()``), so that the ranks of different
nodes share one time axis on node 0's card.
"""

import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from rendezvous.failure import Failure

from ..worker.files import attempt_dirs, attempt_number, first_error
from .collectives import Collectives, CollectivesSnapshot
from .ranks import (
    DONE,
    FAILED,
    LAST_LINES,
    RUNNING,
    STARTING,
    STOPPED,
    RankState,
    exit_text,
    is_failing_rank,
)

# A line longer than this is cut for the card (the task's log has it whole).
_LINE_CHARS = 200
# "[rank3]: text": the prefix launch.command.LINE_PREFIX_TEMPLATE gives torch's
# log tailer for worker lines (torch writes the prefix, the program the text).
_RANK_LINE = re.compile(r"^\[rank(\d+)\]: ?(.*)$", re.DOTALL)


class Payload(NamedTuple):
    """This node's ranks as another node's ``JobState.merge`` takes them (JSON-able ``data``),
    and whether a rank's state changed since the last payload (else only lines did)."""

    data: Dict[str, Any]
    state_changed: bool


@dataclass(frozen=True)
class CallLayout:
    """What the card knows of a call before it starts, from its launch plan.

    ``nproc`` is the number of processes per node when it is known up front
    (None for "auto", which the first attempt's directories tell);
    ``nproc_per_node`` is the setting as torchrun got it.
    """

    call: int
    node_index: int
    num_nodes: int
    nproc_per_node: str
    nproc: Optional[int]
    rdzv_id: str
    log_dir: str
    hang_dir: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of a ``JobState`` for a reader (the card).

    ``ranks`` are sorted by global rank; ``failure`` is the record of what
    failed first once the call failed; ``rounds`` are ``(wall time, attempt)``
    of this node's attempts.
    """

    layout: CallLayout
    settings: Tuple[Tuple[str, str], ...]
    store_endpoint: str
    started: float
    ended: Optional[float]
    ranks: Tuple[RankState, ...]
    rounds: Tuple[Tuple[float, int], ...]
    failure: Optional[Failure]
    version: int
    collectives: CollectivesSnapshot = CollectivesSnapshot()


class JobState:
    """The ranks of one call: this node's from its own sources, the others' as merged.

    Thread-safe: the log pump's threads call ``line``, the card's thread
    ``scan``, ``merge``, ``payload`` and ``snapshot``, the launcher ``finish``.
    ``version`` grows with every change, so readers can skip unchanged states.

    Args:
        layout: the call, this node, the job's size, where its logs go.
        settings: ``(name, value)`` of the settings in effect, for people.
        store_endpoint: ``host:port`` of node 0's store, once known
            (``set_store_endpoint``), else as given to torchrun.
    """

    def __init__(
        self,
        layout: CallLayout,
        settings: Tuple[Tuple[str, str], ...],
        store_endpoint: str,
    ):
        self._layout = layout
        self._node = node_index = layout.node_index
        self._settings = settings
        self._store_endpoint = store_endpoint
        self._lock = threading.Lock()
        self._started = time.time()
        self._ended: Optional[float] = None
        self._ranks: Dict[int, RankState] = {}
        self._rounds: List[Tuple[float, int]] = []
        self._failed_attempts: Set[int] = set()  # attempts whose error file was read
        self._failure: Optional[Failure] = None
        self._collectives = Collectives(layout.hang_dir, node_index)
        self._version = 0
        # Changes of a rank's state (not only of its lines), which the other
        # nodes' payloads carry at once.
        self._state_version = 0
        self._payload_versions = (-1, -1)
        nproc = layout.nproc
        if nproc is not None:
            # Every node runs the same number of processes and torchrun gives
            # node i the global ranks i*nproc .. i*nproc+nproc-1 (the backend's
            # group rank is the node index): the whole job is known up front.
            for node in range(layout.num_nodes) if node_index == 0 else [node_index]:
                for local in range(nproc):
                    rank = node * nproc + local
                    self._ranks[rank] = RankState(rank, local, node)
        self._nproc = nproc

    @property
    def node_index(self) -> int:
        return self._node

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def set_store_endpoint(self, endpoint: str) -> None:
        with self._lock:
            self._store_endpoint = endpoint
            self._version += 1
            self._state_version += 1

    def line(self, text: str) -> None:
        """A line the agent wrote (as the log pump copies it); worker lines update their rank."""
        match = _RANK_LINE.match(text)
        if match is None:
            return
        rank = int(match.group(1))
        content = match.group(2)[:_LINE_CHARS]
        with self._lock:
            state = self._ranks.get(rank)
            if state is None or state.node != self._node:
                return  # a rank of "auto" processes not yet seen on disk; scan adds it
            state.lines.append(content)
            if state.state == STARTING:
                state.start_attempt(0, time.time())
                self._state_version += 1
            self._version += 1

    def scan(self) -> None:
        """Read this node's attempt directories: the attempts started, and their error files.

        An attempt's error file names the rank that failed it: its segment of
        that attempt failed, also when a restart began the next attempt since.
        """
        attempts = attempt_dirs(self._layout.log_dir, self._layout.rdzv_id)
        now = time.time()
        with self._lock:
            changed = False
            if self._nproc is None and attempts:
                # "auto": torchrun chose the count; its first attempt shows it.
                self._nproc = len(_local_ranks(attempts[0])) or None
            started = {number for _, number in self._rounds}
            for attempt_dir in attempts:  # in order: an attempt's error before the next starts
                attempt = attempt_number(attempt_dir)
                if attempt not in started:
                    self._rounds.append((now, attempt))
                    for local in _local_ranks(attempt_dir):
                        state = self._local_rank_state(local)
                        if not state.segments or state.segments[-1].attempt < attempt:
                            state.start_attempt(attempt, now)
                    changed = True
                if attempt not in self._failed_attempts:
                    error = first_error(attempt_dir, self._node)
                    if error is not None:
                        self._failed_attempts.add(attempt)
                        state = self._local_rank_state(error.local_rank)
                        state.fail_attempt(attempt, now, error.traceback_tail)
                        changed = True
            if changed:
                self._version += 1
                self._state_version += 1
        changed, hang_changed = self._collectives.scan()
        with self._lock:
            self._version += changed
            self._state_version += hang_changed

    def finish(self, failure: Optional[Failure]) -> None:
        """The agent ended, and with it every rank this state knows.

        After a success (``failure`` None) every rank is done (on node 0: of
        every node); after a failure the rank its record names failed, and the
        others that still ran were stopped.
        """
        self.scan()
        now = time.time()
        with self._lock:
            self._ended = now
            self._failure = failure
            if failure is None:
                # The agent succeeds only after the exit barrier, which every
                # rank of every node reaches after it returned.
                for state in self._ranks.values():
                    if state.node == self._node or self._node == 0:
                        state.end(DONE, now, "0")
            else:
                for state in self._ranks.values():
                    if is_failing_rank(state, failure) and state.state != FAILED:
                        state.error = state.error or failure.traceback_tail or failure.summary
                        state.end(FAILED, now, exit_text(failure))
                    elif state.state in (STARTING, RUNNING):
                        # Its agent stopped it, or (a rank of another node
                        # whose last word did not reach us) the job ended it.
                        state.end(STOPPED, now)
            self._version += 1
            self._state_version += 1

    def payload(self) -> Optional[Payload]:
        """This node's ranks for node 0, or None if nothing changed since the last payload."""
        with self._lock:
            sent_version, sent_state_version = self._payload_versions
            state_changed = self._state_version != sent_state_version
            if self._version == sent_version and not state_changed:
                return None
            self._payload_versions = (self._version, self._state_version)
            return Payload({
                "node": self._node,
                "ranks": [s.to_payload() for s in self._ranks.values() if s.node == self._node],
                "arrivals": self._collectives.payload(),
            }, state_changed)

    def payload_lost(self) -> None:
        """The last payload did not reach the store: the next ``payload`` is not None."""
        with self._lock:
            self._payload_versions = (-1, -1)

    def merge(self, payload: Dict[str, Any]) -> None:
        """Take another node's ranks from its ``payload`` (node 0 only); a finished rank stays so."""
        node = int(payload["node"])
        if node == self._node:
            return
        with self._lock:
            for data in payload["ranks"]:
                incoming = RankState.from_payload(data)
                known = self._ranks.get(incoming.rank)
                if known is not None and known.state in (DONE, FAILED) and self._ended:
                    continue  # this node's final word (after the job ended) wins
                self._ranks[incoming.rank] = incoming
            self._version += 1
        self._collectives.merge(payload.get("arrivals"))

    def snapshot(self) -> Snapshot:
        with self._lock:
            ranks = tuple(
                replace(s, lines=deque(s.lines, maxlen=LAST_LINES),
                        segments=[replace(segment) for segment in s.segments])
                for _, s in sorted(self._ranks.items())
            )
            return Snapshot(
                layout=self._layout, settings=self._settings,
                store_endpoint=self._store_endpoint, started=self._started, ended=self._ended,
                ranks=ranks, rounds=tuple(self._rounds), failure=self._failure,
                version=self._version,
                collectives=self._collectives.snapshot(s.rank for s in ranks),
            )

    def _local_rank_state(self, local: int) -> RankState:
        """This node's rank with local rank ``local`` (added when nproc_per_node was "auto")."""
        for state in self._ranks.values():
            if state.node == self._node and state.local_rank == local:
                return state
        rank = self._node * (self._nproc or 0) + local
        state = RankState(rank, local, self._node)
        self._ranks[rank] = state
        return state


def _local_ranks(attempt_dir: str) -> List[int]:
    """The local ranks torchrun started in an attempt: its numbered per-rank directories."""
    try:
        names = os.listdir(attempt_dir)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())
