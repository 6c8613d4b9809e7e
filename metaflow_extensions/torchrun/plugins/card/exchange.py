"""The other nodes' ranks reach node 0's card through node 0's store.

Only for a step with a card and more than one node. Each node's task runs a
``card.relay`` child process, which talks to the job's store (the one node
0's agent hosts, found by ``rendezvous.endpoint.store_address`` exactly as the
backend finds it) and decides what goes through it and how often (see
``relay.StoreRelay``). This module is the task's side: it hands the
relay this node's new payloads (other nodes) or merges the payloads the relay
read (node 0) into the ``JobState``, through pipes that never block the task.
The relay dies with the task, and at ``close``.
"""

import functools
import json
import os
import signal
import subprocess
import sys
from typing import Optional

from ..worker.bootstrap import die_with_parent
from . import relay
from .state import JobState


class StatusExchange:
    """Carries ``state``'s ranks between nodes through node 0's store; one thread calls ``step``.

    Args:
        state: this node's ``JobState``.
        run_id: the job's rendezvous id.
        num_nodes: the job's size.
        host, port: node 0's store.
        lines_seconds: the shortest time between two writes for new lines alone.
    """

    def __init__(self, state: JobState, run_id: str, num_nodes: int, host: str, port: int,
                 lines_seconds: float):
        self._state = state
        self._command = [
            sys.executable, "-u", os.path.abspath(relay.__file__), host, str(port),
            run_id, str(num_nodes), str(state.node_index), f"{lines_seconds:g}",
        ]
        self._relay: Optional[subprocess.Popen] = None
        self._pending = b""

    def step(self) -> None:
        """Hand the relay this node's new payload, or merge what it read (node 0)."""
        if self._relay is None:
            self._relay = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                # Tied to the task's process, not to the thread that starts it.
                preexec_fn=functools.partial(
                    die_with_parent, signal.SIGKILL, os.getpid()
                ),
                start_new_session=True,
            )
            os.set_blocking(self._relay.stdout.fileno(), False)
        if self._state.node_index == 0:
            self._merge_read()
        else:
            payload = self._state.payload()
            if payload is not None:
                line = json.dumps({"data": payload.data, "state_changed": payload.state_changed})
                try:
                    self._relay.stdin.write(line.encode("utf-8") + b"\n")
                    self._relay.stdin.flush()
                except OSError:  # the relay is gone; the card keeps this node's own view
                    self._state.payload_lost()

    def close(self) -> None:
        """End the relay (whatever it was doing: node 0's store may be gone already)."""
        if self._relay is not None:
            self._relay.kill()
            self._relay.wait()
            for pipe in (self._relay.stdin, self._relay.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

    def _merge_read(self) -> None:
        try:
            chunk = os.read(self._relay.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            self._state.merge(json.loads(line.decode("utf-8")))


__all__ = ["StatusExchange"]
