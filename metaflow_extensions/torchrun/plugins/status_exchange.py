"""The other nodes' ranks reach node 0's card through node 0's store.

Only for a step with a card and more than one node. Each node's task opens
one client connection to the job's store (the one node 0's agent hosts, found
by ``rendezvous.endpoint.store_address`` exactly as the backend finds it):

- every other node writes its ranks' payload (``JobState.payload``) to its own
  key and counts the write: at once when a rank's state changed (counted in
  ``states_key``), and for new output lines alone at most once per
  ``lines_seconds`` (counted in ``lines_key``);
- node 0 reads both counts in one call on every ``step`` and fetches the
  payloads of the nodes that have written one, in one ``multi_get``: at once
  after a change of state, and at most once per ``lines_seconds`` for lines.

Per other node, node 0's store thus serves two small requests per write
(``set`` and ``add``), at most one write per ``lines_seconds`` while only
lines change; node 0's task asks one ``multi_get`` of the counts per ``step``
whatever the number of nodes, and reads each payload about once per
``lines_seconds``. A payload is a few hundred bytes per rank (state, times,
its last lines cut to 200 characters each). ``bench/card_traffic.py``
measures it.

Store errors are never the job's: the store may not be up yet, or gone
already; then this exchange tries again at the next ``step``.
"""

import json
import socket
import threading
import time
from datetime import timedelta
from typing import List, Optional

from .job_state import JobState

# Where the card's keys live in node 0's store: below the backend's namespace
# and the job's id (rendezvous.keys), so a restart round never wipes them.
_KEY_PREFIX = "metaflow-torchrun/{run_id}/card/"
_CONNECT_TIMEOUT_SECONDS = 2.0


def card_key(run_id: str, node: int) -> str:
    """The store key holding node ``node``'s ranks for the card of job ``run_id``."""
    return _KEY_PREFIX.format(run_id=run_id) + str(node)


def states_key(run_id: str) -> str:
    """The store key counting the writes of job ``run_id``'s payloads after a change of state."""
    return _KEY_PREFIX.format(run_id=run_id) + "states"


def lines_key(run_id: str) -> str:
    """The store key counting the writes of job ``run_id``'s payloads with new lines alone."""
    return _KEY_PREFIX.format(run_id=run_id) + "lines"


class StatusExchange:
    """Carries ``state``'s ranks between nodes through node 0's store.

    Args:
        state: this node's ``JobState``.
        run_id: the job's rendezvous id.
        num_nodes: the job's size.
        host, port: node 0's store.
        lines_seconds: the shortest time between two writes for new lines alone.

    Attributes:
        requests, bytes_sent, bytes_received: what this node asked of the store
            so far (payload bytes), for ``bench/card_traffic.py``.
    """

    def __init__(self, state: JobState, run_id: str, num_nodes: int, host: str, port: int,
                 lines_seconds: float):
        self._state = state
        self._run_id = run_id
        self._num_nodes = num_nodes
        self._host = host
        self._port = port
        self._lines_seconds = lines_seconds
        self._lock = threading.Lock()  # one user of the connection at a time
        self._store = None
        self._lines_due_at = 0.0
        self._counts_seen = (b"", b"")
        self._written: List[str] = []  # node 0: the payload keys known to exist
        self._written_counts = False  # node 0: both counts exist
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def step(self, wait: Optional[float] = None) -> None:
        """Write (other nodes) or read (node 0) what is new; store errors are swallowed.

        ``wait``: give up at once if another ``step`` still runs after that
        many seconds (None: wait for it).
        """
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            return
        try:
            if self._state.node_index == 0:
                self._read()
            else:
                self._publish()
        except Exception:  # noqa: BLE001 - the store's errors are many (DistError, OSError, ...)
            self._store = None  # reconnect next time: node 0 may not be up yet, or gone
        finally:
            self._lock.release()

    def _publish(self) -> None:
        now = time.monotonic()
        lines_due = now >= self._lines_due_at
        payload = self._state.payload(lines_due)
        if payload is None:
            return
        if lines_due:
            self._lines_due_at = now + self._lines_seconds
        data = json.dumps(payload.data, separators=(",", ":")).encode("utf-8")
        counter = states_key if payload.state_changed else lines_key
        try:
            store = self._connected()
            store.set(card_key(self._run_id, self._state.node_index), data)
            store.add(counter(self._run_id), 1)
        except Exception:
            self._state.payload_lost()
            raise
        self.requests += 2
        self.bytes_sent += len(data)

    def _read(self) -> None:
        store = self._connected()
        if not self._written_counts:
            # Create both counts, so that one multi_get reads them (it would
            # wait for a missing key).
            self.requests += 2
            store.add(states_key(self._run_id), 0)
            store.add(lines_key(self._run_id), 0)
            self._written_counts = True
        self.requests += 1
        states, lines = store.multi_get([states_key(self._run_id), lines_key(self._run_id)])
        seen_states, seen_lines = self._counts_seen
        now = time.monotonic()
        if states == seen_states and (lines == seen_lines or now < self._lines_due_at):
            return
        self._counts_seen = (states, lines)
        self._lines_due_at = now + self._lines_seconds
        for node in range(1, self._num_nodes):
            key = card_key(self._run_id, node)
            if key not in self._written:
                # A get of a missing key would wait for it: check it exists,
                # once per node until it has written.
                self.requests += 1
                if store.check([key]):
                    self._written.append(key)
        if not self._written:
            return
        self.requests += 1
        for raw in store.multi_get(self._written):
            self.bytes_received += len(raw)
            self._state.merge(json.loads(raw.decode("utf-8")))

    def _connected(self):
        if self._store is None:
            self._store = _connect(self._host, self._port)
        return self._store


def _connect(host: str, port: int):
    """A client of node 0's store; OSError at once when nothing listens there.

    TCPStore's own client would retry for its whole timeout; a plain socket
    probe first keeps a node that starts before node 0 from waiting in here.
    """
    with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_SECONDS):
        pass
    from torch.distributed import TCPStore  # imported only for a card on several nodes

    return TCPStore(host, port, is_master=False,
                    timeout=timedelta(seconds=_CONNECT_TIMEOUT_SECONDS))


__all__ = ["StatusExchange", "card_key", "lines_key", "states_key"]
