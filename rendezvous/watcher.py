"""The background threads of one node: heartbeats, and changes of the job (failures, restarts).

Nothing polls. A node learns of a change because node 0's store answers a
``wait`` when the change happens: each node waits on a key of its own,
``wake/<i>``, which whoever changes the job sets for every node in one
``multi_set``. So while a job trains, each node costs node 0 one heartbeat
per ``heartbeat_interval`` and nothing else.
"""

import logging
import threading
import time
from datetime import timedelta
from typing import Callable, Dict, List, Optional, Tuple

from torch.distributed import DistError, DistStoreError, Store

from .errors import JobFailedError, StoreUnreachableError
from .failure import Failure, FailureKind
from .failures import encode_failure, parse_failures, root_cause
from .keys import JobKeys
from .settings import RendezvousSettings
from .store import BoundedConnection, connect_store
from .topology import Topology

logger = logging.getLogger(__name__)

# How long one wait for a change lasts before it is renewed. A wait that ends
# by its timeout costs node 0 a cancel and logs a TCPStore warning, so it is
# long; nothing depends on it ending: stop() wakes the waiting thread itself.
_CHANGE_WAIT = timedelta(hours=1)
_CHANGE_THREAD = "metaflow-rdzv-changes"
# How often per heartbeat_interval node 0 reads every node's heartbeat counter
# (one request for all): a silent node is failed within heartbeat_timeout plus
# this fraction of an interval after its last beat.
_READS_PER_INTERVAL = 4


def wake_every_node(store: Store, keys: JobKeys, num_nodes: int,
                    also: Optional[Dict[str, str]] = None) -> None:
    """Set ``also`` (key: value) and every node's wake key in one request, in that order.

    A node woken this way reads the job's state after its wake, so it sees
    whatever ``also`` changed.
    """
    also = also or {}
    names = list(also) + [keys.wake(node) for node in range(num_nodes)]
    store.multi_set(names, list(also.values()) + ["1"] * num_nodes)


def wait_for_wake(store: Store, wake_key: str, stopped: threading.Event) -> bool:
    """Wait until ``wake_key`` exists, delete it and return True; False once ``stopped`` is set
    (whoever sets it also sets the key, which ends the wait).

    Raises:
        DistError, RuntimeError: node 0's store went away.
    """
    while not stopped.is_set():
        try:
            store.wait([wake_key], _CHANGE_WAIT)
        except DistStoreError as error:
            if "timeout" in str(error):
                continue
            raise
        if stopped.is_set():
            return False
        store.delete_key(wake_key)
        return True
    return False


class Watcher:
    """The two background threads of one node, and what they found.

    - The heartbeat thread adds one to this node's heartbeat counter every
      ``heartbeat_interval`` over ``side``; on node 0 it also fails the job
      when another node's counter stops for ``heartbeat_timeout``. Node 0
      counts as unreachable once it answered nothing for ``heartbeat_timeout``
      (a heartbeat unanswered until then).
    - The change thread waits, over a connection of its own, until this
      node's ``wake/<i>`` key exists; then it deletes the key, reads the
      newest requested round and the failure records in one request, and
      waits again. A change made before the delete is in what it reads; one
      made after sets the key again. Whoever records the job's first failure,
      or first asks for a round, wakes every node (``wake_every_node``). A
      change thread that loses node 0's store (the process went away) fails
      the job at once.

    ``side`` is also what the handler uses once its main connection may be
    stuck in an abandoned call: to publish a failure, read the members of a
    round, or close.

    Args:
        keys: the keys of this node's job.
        settings: the intervals and timeouts to keep.
        topology: this node's index and the number of nodes.
        side: the connection to node 0's store the heartbeats go over.
        joined: whether this node joined a round yet. Until then, node 0
            takes a node that never sent a heartbeat for one still starting
            (the join timeout covers it), not for a silent one.
        host, port: node 0's store, for the change thread's own connection.
        on_failure: called once with the first failure found (by either thread).
    """

    def __init__(
        self,
        keys: JobKeys,
        settings: RendezvousSettings,
        topology: Topology,
        side: BoundedConnection,
        joined: Callable[[], bool],
        host: str,
        port: int,
        on_failure: Callable[[JobFailedError], None] = lambda failure: None,
    ):
        self._keys = keys
        self._settings = settings
        self._topology = topology
        self._side = side
        self._joined = joined
        self._host = host
        self._port = port
        self._on_failure = on_failure
        self._requested_round = 0
        self._failure: Optional[JobFailedError] = None
        self._failure_lock = threading.Lock()
        # Nodes node 0 found silent: they will never close, so none waits for them.
        self._silent_nodes: List[int] = []
        self._stop_event = threading.Event()
        self._heartbeats: Dict[int, Tuple[int, float]] = {}
        self._threads = [
            threading.Thread(target=self._beat, name="metaflow-rdzv-heartbeat", daemon=True),
            threading.Thread(target=self._follow_changes, name=_CHANGE_THREAD, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End both threads: wake this node's change thread, wait for both (bounded).

        When node 0 cannot be told, the change thread is left alone: its wait
        fails by itself once node 0's process is gone, and over a cut link it
        stays blocked in a daemon thread, which does not hold up the exit.
        """
        self._stop_event.set()
        wake_key = self._keys.wake(self._topology.node_index)
        threads = self._threads
        try:
            self._side.call(lambda store: store.set(wake_key, "1"))
        except StoreUnreachableError:
            threads = [thread for thread in threads if thread.name != _CHANGE_THREAD]
        for thread in threads:
            if thread.is_alive() and threading.current_thread() is not thread:
                thread.join(self._side.call_timeout)

    # What the watcher found so far

    def requested_round(self) -> int:
        """The newest round any node asked for, as of the last change seen."""
        return self._requested_round

    def failure(self) -> Optional[JobFailedError]:
        """The job's failure as seen so far (``None`` while none is known)."""
        return self._failure

    def _stopped_beating(self, node: int, count: int, now: float) -> bool:
        """Whether ``node``'s heartbeat counter, read as ``count`` at ``now``, stood still
        for two intervals as of node 0's reads (False on other nodes, and for node 0).

        Such a node is dead or cut off long before ``heartbeat_timeout`` says so; a
        live node beats once per interval. ``count`` is read by the caller, so a
        node 0 whose own reads fell behind does not take a live node for dead.
        """
        last_count, since = self._heartbeats.get(node, (-1, now))
        return count == last_count and now - since > 2 * self._settings.heartbeat_interval

    def wait_for_others_to_close(self, closed: int, close_timeout: float) -> None:
        """Node 0 at its close: wait up to ``close_timeout`` until every node that can close
        did (``closed`` have so far).

        Only nodes that sent heartbeats and still send them can close; one that
        never came (a join timeout) or died (its agent killed: its task failed,
        and a local run's node 0 is stopped seconds later) must not hold node 0 up.
        """
        beats = [self._keys.heartbeat(i) for i in range(self._topology.num_nodes)]
        side = self._side
        counts = [int(count) for count in side.call(lambda store: store.multi_get(beats))]
        now = time.monotonic()
        expected = sum(1 for node, count in enumerate(counts)
                       if count and node not in self._silent_nodes
                       and not self._stopped_beating(node, count, now))
        closed_key = self._keys.closed
        deadline = time.monotonic() + close_timeout
        while closed < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            closed = side.call(lambda store: store.add(closed_key, 0))

    def _fail(self, failure: Optional[JobFailedError]) -> None:
        """Keep ``failure`` unless one is known already: the first one seen stays."""
        with self._failure_lock:
            first = self._failure is None and failure is not None
            self._failure = self._failure or failure
        if first:
            self._on_failure(failure)

    # Reading and writing the failure records

    def failure_records(self) -> List[Failure]:
        """Every failure record in the store, in the order they were written.

        Raises:
            StoreUnreachableError: node 0 did not answer.
        """
        key = self._keys.failures
        return self._side.call(lambda store: parse_failures(store.get(key)))

    def root_cause(self) -> Optional[JobFailedError]:
        """The root cause of the failure records in the store (``None`` when there are none).

        Raises:
            StoreUnreachableError: node 0 did not answer.
        """
        return _job_failed(self.failure_records())

    def reread_failure(self) -> None:
        """Read the failure records once more: their root cause replaces the failure seen so far.

        Raises:
            StoreUnreachableError: node 0 did not answer.
        """
        cause = self.root_cause()
        with self._failure_lock:
            self._failure = cause or self._failure

    def publish_failure(self, failure: Failure) -> None:
        """Record ``failure``; the job's first record wakes every node. Never raises."""
        keys = self._keys
        record = encode_failure(failure)
        num_nodes = self._topology.num_nodes

        def record_and_wake(store: Store) -> None:
            store.append(keys.failures, record)
            # Only the first record wakes anyone: every node stops at the first
            # failure it sees, and later records are read when nodes close.
            if store.add(keys.failure_count, 1) == 1:
                wake_every_node(store, keys, num_nodes)

        try:
            self._side.call(record_and_wake)
        except StoreUnreachableError as error:
            logger.warning("metaflow rendezvous: could not tell the other nodes: %s", error)

    # The heartbeat thread

    def _beat(self) -> None:
        settings = self._settings
        interval = settings.heartbeat_interval
        heartbeat_key = self._keys.heartbeat(self._topology.node_index)
        last_answer = time.monotonic()
        # The first beat goes at once, so that a node that dies early is timed
        # from its start. Then every node beats at the same instants, the
        # multiples of the interval on the wall clock: node 0's store reads many
        # beats per wake-up of its thread instead of waking once per beat, which
        # is most of what a beat costs it.
        pause = 0.0
        while not self._stop_event.wait(pause):
            now = time.monotonic()
            # Node 0 is unreachable once silent for heartbeat_timeout since its
            # last answer, as a node is for node 0; a thread that got no CPU
            # for long still gives it heartbeat_timeout less one interval.
            deadline = max(last_answer + settings.heartbeat_timeout,
                           now + settings.heartbeat_timeout - interval)
            try:
                self._side.call(lambda store: store.add(heartbeat_key, 1), deadline)
                last_answer = time.monotonic()
                if self._topology.is_control:
                    self._read_heartbeats_until_next_beat()
            except StoreUnreachableError as error:
                self._fail(self._unreachable(error))
            if self._failure is not None:
                return
            pause = interval - time.time() % interval

    def _read_heartbeats_until_next_beat(self) -> None:
        """Node 0 reads the counters ``_READS_PER_INTERVAL`` times, between the beat instants.

        So no beat is in flight during a read, and a counter that stopped is
        seen within a fraction of an interval past ``heartbeat_timeout``.
        """
        interval = self._settings.heartbeat_interval
        for read in range(_READS_PER_INTERVAL):
            pause = interval * (read + 0.5) / _READS_PER_INTERVAL - time.time() % interval
            if pause < 0 and read < _READS_PER_INTERVAL - 1:
                continue  # its instant passed (the first beat, or a late one): the next
            if self._stop_event.wait(max(0.0, pause)):
                return
            self._check_heartbeats(time.monotonic())
            if self._failure is not None:
                return

    def _unreachable(self, error: object) -> JobFailedError:
        return JobFailedError(Failure(
            FailureKind.NODE_LOST,
            f"its rendezvous store at {self._side.endpoint} is unreachable: {error}. "
            f"Its own log says why.",
            node_index=0,
        ))

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
                # Every node silent now is recorded, not only the first: node 0
                # waits at its close for the nodes it does not know to be silent.
                self._silent_nodes.append(node)
                self.publish_failure(Failure(FailureKind.NODE_LOST, reason, node))
        if self._silent_nodes:
            self._fail(self.root_cause())

    # The change thread

    def _follow_changes(self) -> None:
        keys = self._keys
        wake_key = keys.wake(self._topology.node_index)
        state_keys = [keys.round, keys.failures]
        try:
            store = connect_store(self._host, self._port, self._settings.heartbeat_timeout)
            while wait_for_wake(store, wake_key, self._stop_event):
                round_raw, failures_raw = store.multi_get(state_keys)
                self._requested_round = int(round_raw)
                self._fail(_job_failed(parse_failures(failures_raw)))
                if self._failure is not None:
                    return
        except (DistError, RuntimeError, StoreUnreachableError) as error:
            if not self._stop_event.is_set():
                self._fail(self._unreachable(str(error).splitlines()[0]))


def _job_failed(records: List[Failure]) -> Optional[JobFailedError]:
    """The error of the records' root cause, None without records."""
    cause = root_cause(records)
    return None if cause is None else JobFailedError(cause)


__all__ = ["Watcher", "wait_for_wake", "wake_every_node"]
