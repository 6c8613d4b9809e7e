"""The card's traffic with node 0's store, in a child process of the task.

``card.exchange`` runs this file by its path (torch and the standard library
only, like ``worker.bootstrap``) for a step with a card on more than one node:

    python -u relay.py HOST PORT RUN_ID NUM_NODES NODE_INDEX LINES_SECONDS

Why a child process: node 0's store lives in node 0's torchrun agent and goes
away when the job ends, at a moment no task can foresee; every TCPStore call
that meets the closed connection prints a C++ stack trace on the stderr of the
process that made it. This process's stderr goes nowhere, so the task's log
never shows one, and the task itself never imports torch for the card.

The other nodes (``NODE_INDEX`` > 0) read payloads (``JobState.payload``) from
stdin, one JSON line each: ``{"data": ..., "state_changed": bool}``; node 0
writes the payloads it reads to stdout, one JSON line each. What goes through
the store, and how often, is ``StoreRelay``'s to decide (see its docstring).
"""

import json
import os
import select
import socket
import sys
import time
from datetime import timedelta
from typing import List, Optional

# How often the relay acts: as often as the card's thread looks.
TICK_SECONDS = 0.25
_CONNECT_TIMEOUT_SECONDS = 2.0
# The card's keys in node 0's store: below the backend's namespace and the
# job's id (see rendezvous.keys), so that a restart round never wipes them.
_KEY_PREFIX = "metaflow-torchrun/{run_id}/card/"


def card_key(run_id: str, node: int) -> str:
    """The key holding node ``node``'s ranks for the card of job ``run_id``."""
    return _KEY_PREFIX.format(run_id=run_id) + str(node)


def states_key(run_id: str) -> str:
    """The key that exists when a node wrote its payload after a change of state."""
    return _KEY_PREFIX.format(run_id=run_id) + "states"


def lines_key(run_id: str) -> str:
    """The key that exists when a node wrote its payload with new lines alone."""
    return _KEY_PREFIX.format(run_id=run_id) + "lines"


class StoreRelay:
    """One node's side of the card's traffic with node 0's store; call ``tick`` in a loop.

    Another node ``offer`` s each new payload of its ranks; ``tick`` writes the
    latest one to the node's key and then sets a flag key: at once after a
    change of state (``states_key``), and with new lines alone at most once
    per ``lines_seconds`` (``lines_key``). Node 0's ``tick`` waits on
    ``states_key`` (a blocking store call) until new lines are due, then, if
    a flag is set, deletes the flags and returns every node's latest payload,
    read in one ``multi_get``: at once after a change of state, and at most
    once per ``lines_seconds`` for lines.

    So per other node the store serves one ``set`` for the payload and one
    for the flag per write, at most one write per ``lines_seconds`` while only
    lines change; node 0 asks nothing while nothing changes but one wait and
    one ``check`` per ``lines_seconds``, whatever the job's size, and reads
    each payload at most once per change of state or ``lines_seconds``. Store
    errors propagate; ``reset`` drops the connection, and the next ``tick``
    connects again (a payload not written stays offered).

    Attributes:
        requests, bytes_sent, bytes_received: store calls made so far, and the
            payload bytes written and read (``bench/card_traffic.py``).
    """

    def __init__(self, host: str, port: int, run_id: str, num_nodes: int, node_index: int,
                 lines_seconds: float):
        self._host = host
        self._port = port
        self._run_id = run_id
        self._num_nodes = num_nodes
        self._node = node_index
        self._lines_seconds = lines_seconds
        self._store = None
        self._lines_due_at = 0.0
        self._offered: Optional[bytes] = None
        self._offered_state_change = False
        self._written: List[str] = []  # node 0: the payload keys known to exist
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def is_reader(self) -> bool:
        """Node 0 reads the other nodes' payloads; the others write theirs."""
        return self._node == 0

    def offer(self, data: bytes, state_changed: bool) -> None:
        """The node's newest payload (it replaces an unwritten older one)."""
        self._offered = data
        self._offered_state_change = self._offered_state_change or state_changed

    def tick(self) -> List[bytes]:
        """Write what is due (other nodes), or wait for a change and read it (node 0)."""
        if self.is_reader:
            return self._read()
        self._write()
        return []

    def reset(self) -> None:
        self._store = None

    def _write(self) -> None:
        now = time.monotonic()
        if self._offered is None or (not self._offered_state_change and now < self._lines_due_at):
            return
        flag = states_key if self._offered_state_change else lines_key
        store = self._connected()
        store.set(card_key(self._run_id, self._node), self._offered)
        store.set(flag(self._run_id), b"1")  # after the payload: node 0 reads it once woken
        self.requests += 2
        self.bytes_sent += len(self._offered)
        self._offered, self._offered_state_change = None, False
        self._lines_due_at = now + self._lines_seconds

    def _read(self) -> List[bytes]:
        store = self._connected()
        flags = [states_key(self._run_id), lines_key(self._run_id)]
        timeout = max(TICK_SECONDS, self._lines_due_at - time.monotonic())
        self.requests += 1
        try:
            store.wait(flags[:1], timedelta(seconds=timeout))
        except Exception:  # noqa: BLE001 - TCPStore's time-out (DistStoreError), or the store gone
            self.requests += 1
            if not store.check(flags[1:]):
                self._lines_due_at = time.monotonic() + self._lines_seconds
                return []
        # Flags down before reading: a payload written after this read sets one again.
        for flag in flags:
            store.delete_key(flag)
        self.requests += len(flags)
        self._lines_due_at = time.monotonic() + self._lines_seconds
        for node in range(1, self._num_nodes):
            key = card_key(self._run_id, node)
            if key not in self._written:
                # A get of a missing key would wait for it: check it exists,
                # once per node until it has written.
                self.requests += 1
                if store.check([key]):
                    self._written.append(key)
        if not self._written:
            return []
        payloads = store.multi_get(self._written)
        self.requests += 1
        self.bytes_received += sum(len(payload) for payload in payloads)
        return payloads

    def _connected(self):
        if self._store is None:
            # A plain socket probe first: TCPStore's own client would retry
            # for its whole timeout while nothing listens (node 0 not up yet,
            # or its store gone).
            with socket.create_connection((self._host, self._port),
                                          timeout=_CONNECT_TIMEOUT_SECONDS):
                pass
            from torch.distributed import TCPStore

            self._store = TCPStore(self._host, self._port, is_master=False,
                                   timeout=timedelta(seconds=_CONNECT_TIMEOUT_SECONDS))
        return self._store


def main(argv: List[str]) -> None:
    host, port, run_id, num_nodes, node_index, lines_seconds = argv
    # torch takes seconds to import: now, while the agent and the workers start,
    # not at the first connection, once the store listens, which would hold the
    # other nodes' first states off node 0's card for as long.
    import torch.distributed  # noqa: F401
    relay = StoreRelay(host, int(port), run_id, int(num_nodes), int(node_index),
                       float(lines_seconds))
    stdin = sys.stdin.buffer
    pending = b""
    while True:
        if not relay.is_reader:
            # Take every payload the task sent since the last tick.
            while select.select([stdin], [], [], 0)[0]:
                chunk = os.read(stdin.fileno(), 1 << 16)
                if not chunk:
                    return  # the task closed our stdin: its call ended
                pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                offered = json.loads(line)
                relay.offer(json.dumps(offered["data"]).encode("utf-8"), offered["state_changed"])
        try:
            for payload in relay.tick():
                sys.stdout.buffer.write(payload + b"\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the store's errors are many; try again next tick
            relay.reset()
        time.sleep(TICK_SECONDS)


if __name__ == "__main__":
    main(sys.argv[1:])
