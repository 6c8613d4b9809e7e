"""The background thread of one node: heartbeats, restart requests, failures."""

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .errors import JobFailedError, StoreUnreachableError
from .failures import OWN, FailureKind, FailureRecord, parse_failures
from .failures import root_cause as root_cause_of
from .keys import JobKeys
from .settings import RendezvousSettings
from .store import BoundedConnection
from .topology import Topology

logger = logging.getLogger(__name__)


class Watcher(threading.Thread):
    """Background thread of one node: heartbeats, restart requests, failures.

    It sends this node's heartbeat, reads the newest requested round and the
    ``failures`` key, and on node 0 fails the job when another node's heartbeat
    stops. It talks over a connection of its own (``side``), which the handler
    also uses once its main connection may be stuck in an abandoned call: to
    publish a failure, read the members of a round, or close. A call on
    ``side`` that gets no answer within ``heartbeat_timeout`` means node 0 is
    unreachable.

    Args:
        keys: the keys of this node's job.
        settings: the intervals and timeouts to keep.
        topology: this node's index and the number of nodes.
        side: the connection to node 0's store the watcher talks over.
        joined: whether this node joined a round yet. Until then, node 0
            takes a node that never sent a heartbeat for one still starting
            (the join timeout covers it), not for a silent one.
    """

    def __init__(
        self,
        keys: JobKeys,
        settings: RendezvousSettings,
        topology: Topology,
        side: BoundedConnection,
        joined: Callable[[], bool],
    ):
        super().__init__(name="metaflow-rdzv-watch", daemon=True)
        self._keys = keys
        self._settings = settings
        self._topology = topology
        self._side = side
        self._joined = joined
        self._requested_round = 0
        self._failure: Optional[JobFailedError] = None
        # Nodes node 0 found silent: they will never close, so none waits for them.
        self._silent_nodes: List[int] = []
        self._stop_event = threading.Event()
        self._heartbeats: Dict[int, Tuple[int, float]] = {}

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(self._side.call_timeout)

    # What the watcher found so far

    def requested_round(self) -> int:
        """The newest round any node asked for, as of the last poll."""
        return self._requested_round

    def failure(self) -> Optional[JobFailedError]:
        """The job's failure as seen so far (``None`` while none is known)."""
        return self._failure

    def silent_nodes(self) -> List[int]:
        """The nodes node 0 failed the job for because their heartbeats stopped."""
        return list(self._silent_nodes)

    # Reading and writing the failure records

    def failure_records(self) -> List[FailureRecord]:
        """Every failure record in the store, in the order they were written.

        Raises:
            StoreUnreachableError: node 0 did not answer.
        """
        key = self._keys.failures
        return self._side.call(
            lambda store: parse_failures(store.get(key)) if store.check([key]) else []
        )

    def root_cause(self) -> Optional[JobFailedError]:
        """The root cause of the failure records in the store (``None`` when there are none).

        Raises:
            StoreUnreachableError: node 0 did not answer.
        """
        return root_cause_of(self.failure_records())

    def reread_failure(self) -> None:
        """Read the failure records once more: their root cause replaces the failure seen so far.

        Raises:
            StoreUnreachableError: node 0 did not answer.
        """
        self._failure = self.root_cause() or self._failure

    def publish_failure(self, reason: str, node: int, kind: FailureKind = OWN) -> None:
        """Record that ``node`` failed, and why. Never raises."""
        key = self._keys.failures
        record = FailureRecord(str(node), kind, reason).encode()
        try:
            self._side.call(lambda store: store.append(key, record))
        except StoreUnreachableError as error:
            logger.warning("metaflow rendezvous: could not tell the other nodes: %s", error)

    # The thread

    def run(self) -> None:
        settings = self._settings
        heartbeat_key = self._keys.heartbeat(self._topology.node_index)
        round_key = self._keys.round
        next_beat = 0.0
        # The first poll waits one interval: at the start of a round it would
        # only compete with the round's own calls for node 0 and the CPU.
        while not self._stop_event.wait(settings.poll_interval):
            now = time.monotonic()
            try:
                if now >= next_beat:
                    self._side.call(lambda store: store.add(heartbeat_key, 1))
                    if self._topology.is_control:
                        self._check_heartbeats(now)
                    next_beat = now + settings.heartbeat_interval
                self._requested_round = self._side.call(lambda store: store.add(round_key, 0))
                self._failure = self._failure or self.root_cause()
            except StoreUnreachableError as error:
                self._failure = JobFailedError(
                    f"the control node (node 0, rendezvous store at {self._side.endpoint}) is "
                    f"unreachable: {error}. Its own log says why.",
                    node_index=0,
                )
            if self._failure is not None:
                return

    def _check_heartbeats(self, now: float) -> None:
        others = range(1, self._topology.num_nodes)
        keys = [self._keys.heartbeat(i) for i in others]
        counts = self._side.call(lambda store: store.multi_get(keys))
        for node, raw in zip(others, counts):
            count = int(raw)
            last_count, since = self._heartbeats.get(node, (-1, now))
            if count != last_count:
                self._heartbeats[node] = (count, now)
            # Before the first round forms, a node that never beat may just be
            # starting (the join timeout covers it); after, it must beat.
            elif (count > 0 or self._joined()) and (
                now - since > self._settings.heartbeat_timeout
            ):
                reason = (
                    f"stopped sending heartbeats {now - since:.0f} s ago (its agent was "
                    f"killed, or the network to it is cut)"
                )
                self._silent_nodes.append(node)
                self.publish_failure(reason, node)
                self._failure = self.root_cause()
                return


__all__ = ["Watcher"]
