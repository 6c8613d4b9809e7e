"""The ``metaflow`` rendezvous handler: fixed membership, node 0 hosts the store.

Store layout, all below ``metaflow-torchrun/<rdzv id>/``:

- ``round``: the newest round any node asked for (restart requests move it up).
- ``r<N>/count``, ``r<N>/members``: arrivals in round N; the last arrival checks
  the member list and sets ``r<N>/complete``, which the others wait on.
- ``r<N>/agent/``: the store handed to torch's agent for round N (rank
  assignment, exit barrier).
- ``hb/<i>``: heartbeat counter of node i; node 0 watches them all.
- ``failures``: one line ``<node index>\t<kind>\t<reason>`` per failing node, in
  the order they were recorded; see ``root_cause``.
- ``closed``: one count per node that finished; node 0 waits for them before
  taking the store down.
"""

import atexit
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Dict, List, NamedTuple, Optional, Tuple

from torch.distributed import DistStoreError, Store, TCPStore
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
)

from . import BACKEND_NAME
from .endpoint import derive_port, format_endpoint, parse_endpoint
from .errors import (
    ForeignJobError,
    JobFailedError,
    JoinTimeoutError,
    MetaflowRendezvousError,
    StoreUnreachableError,
    TopologyError,
)
from .network import socket_ifname_defaults
from .settings import RendezvousSettings
from .store import (
    JOB_KEY,
    KEY_NAMESPACE,
    BoundedConnection,
    connect_store,
    host_store,
    wait_until_listening,
)
from .topology import NUM_NODES_VAR, Topology, read_topology

logger = logging.getLogger(__name__)


# Worker errors that say a peer went away: the failure of one rank makes the
# ranks talking to it fail like this, so such a failure is rarely the root cause.
_PEER_LOST_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "connectFullMesh",
    "DistNetworkError",
    "DistBackendError",
    "remote process exited",
    "NCCL error",
)

OWN = "own"
PEER_LOST = "peer-lost"
# How long a node whose workers only lost a peer waits for the failure that
# caused it to be recorded by its own node.
_ROOT_CAUSE_GRACE = 2.0


def describe_failure(error: BaseException) -> Tuple[str, str]:
    """One line saying how this node's agent failed, and its kind (``OWN`` or ``PEER_LOST``)."""
    if not isinstance(error, ChildFailedError):
        return f"{type(error).__name__}: {error}", OWN
    rank, failure = error.get_first_failure()
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
    text = f"global rank {rank} (local rank {failure.local_rank}) {how}"
    # Only an error file (a worker wrapped by @record, or our bootstrap)
    # carries the worker's own words; otherwise torch makes up a generic hint.
    message = failure.message if os.path.isfile(failure.error_file) else ""
    if isinstance(message, dict):  # the layout torch's @record writes
        message = message.get("message", "")
    lines = str(message).strip().splitlines()
    if lines:
        text += f": {lines[-1]}"
    kind = PEER_LOST if any(marker in str(message) for marker in _PEER_LOST_MARKERS) else OWN
    return text, kind


class FailureRecord(NamedTuple):
    """One line of the ``failures`` key."""

    node: str
    kind: str
    reason: str


def parse_failures(raw: bytes) -> List[FailureRecord]:
    records = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        node, _, rest = line.partition("\t")
        kind, _, reason = rest.partition("\t")
        records.append(FailureRecord(node, kind, reason))
    return records


def root_cause(records: List[FailureRecord]) -> Optional[JobFailedError]:
    """The error every node reports.

    The first failure of kind ``OWN`` wins over failures that only say a peer
    went away, even ones recorded earlier: when a rank dies, its peers' ranks
    fail in their collectives at once, and their agents may record that first.
    """
    if not records:
        return None
    node, _, reason = next((record for record in records if record.kind == OWN), records[0])
    who = "the control node (node 0)" if node == "0" else f"node {node}"
    return JobFailedError(
        f"{who} failed first: {reason}", node_index=int(node) if node.isdigit() else None
    )


class _Watcher(threading.Thread):
    """Background thread of one node: heartbeats, restart requests, failures.

    It sends this node's heartbeat, reads the newest requested round and the
    ``failures`` key, and on node 0 fails the job when another node's heartbeat
    stops. It talks over a connection of its own (``side``), which the handler
    also uses once its main connection may be stuck in an abandoned call: to
    publish a failure, read the members of a round, or close. A call on
    ``side`` that gets no answer within ``heartbeat_timeout`` means node 0 is
    unreachable.
    """

    def __init__(self, handler: "MetaflowRendezvousHandler", side: BoundedConnection):
        super().__init__(name="metaflow-rdzv-watch", daemon=True)
        self.handler = handler
        self.side = side
        self.latest_round = 0
        self.failure: Optional[JobFailedError] = None
        # Nodes node 0 found silent: they will never close, so none waits for them.
        self.silent_nodes: List[int] = []
        self._stop_event = threading.Event()
        self._heartbeats: Dict[int, Tuple[int, float]] = {}

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(self.side.call_timeout)

    def read_failures(self) -> List[FailureRecord]:
        key = self.handler.key("failures")
        return self.side.call(
            lambda store: parse_failures(store.get(key)) if store.check([key]) else []
        )

    def read_failure(self) -> Optional[JobFailedError]:
        return root_cause(self.read_failures())

    def publish_failure(self, reason: str, node: int, kind: str = OWN) -> None:
        """Record that ``node`` failed, and why. Never raises."""
        key = self.handler.key("failures")
        record = f"{node}\t{kind}\t{' '.join(reason.split())}\n"
        try:
            self.side.call(lambda store: store.append(key, record))
        except StoreUnreachableError as error:
            logger.warning("metaflow rendezvous: could not tell the other nodes: %s", error)

    def run(self) -> None:
        handler = self.handler
        settings = handler.settings
        heartbeat_key = handler.key(f"hb/{handler.node_index}")
        round_key = handler.key("round")
        next_beat = 0.0
        # The first poll waits one interval: at the start of a round it would
        # only compete with the round's own calls for node 0 and the CPU.
        while not self._stop_event.wait(settings.poll_interval):
            now = time.monotonic()
            try:
                if now >= next_beat:
                    self.side.call(lambda store: store.add(heartbeat_key, 1))
                    if handler.topology.is_control:
                        self._check_heartbeats(now)
                    next_beat = now + settings.heartbeat_interval
                self.latest_round = self.side.call(lambda store: store.add(round_key, 0))
                self.failure = self.failure or self.read_failure()
            except StoreUnreachableError as error:
                self.failure = JobFailedError(
                    f"the control node (node 0, rendezvous store at {handler.endpoint}) is "
                    f"unreachable: {error}. Its own log says why.",
                    node_index=0,
                )
            if self.failure is not None:
                return

    def _check_heartbeats(self, now: float) -> None:
        handler = self.handler
        others = range(1, handler.topology.num_nodes)
        keys = [handler.key(f"hb/{i}") for i in others]
        counts = self.side.call(lambda store: store.multi_get(keys))
        for node, raw in zip(others, counts):
            count = int(raw)
            last_count, since = self._heartbeats.get(node, (-1, now))
            if count != last_count:
                self._heartbeats[node] = (count, now)
            # Before the first round forms, a node that never beat may just be
            # starting (the join timeout covers it); after, it must beat.
            elif (count > 0 or handler.joined_a_round) and (
                now - since > handler.settings.heartbeat_timeout
            ):
                reason = (
                    f"stopped sending heartbeats {now - since:.0f} s ago (its agent was "
                    f"killed, or the network to it is cut)"
                )
                self.silent_nodes.append(node)
                self.publish_failure(reason, node)
                self.failure = self.read_failure()
                return


class _AgentStore(Store):
    """The store torch's agent gets for one round: node 0's store under a round prefix.

    Every call goes through the handler's bounded connection, so none blocks
    the agent for long, and waits (rank assignment, the exit barrier) end as
    soon as the job fails elsewhere.
    """

    def __init__(self, main: BoundedConnection, prefix: str, join_timeout: float):
        super().__init__()
        self._main = main
        self._prefix = prefix
        self._timeout = timedelta(seconds=join_timeout)

    @property
    def timeout(self) -> timedelta:
        return self._timeout

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout = timeout

    def wait(self, keys: List[str], timeout: Optional[timedelta] = None) -> None:
        # The agent waits here only in its exit barrier, which logs any error
        # with a traceback and carries on as if the barrier had passed. When
        # the job failed elsewhere, end the wait quietly instead: shutdown()
        # raises that failure right after.
        try:
            self._wait(keys, timeout)
        except JobFailedError:
            pass

    def _wait(self, keys: List[str], timeout: Optional[timedelta] = None) -> None:
        timeout = timeout or self._timeout
        full = [self._prefix + key for key in keys]
        if not self._main.wait(full, time.monotonic() + timeout.total_seconds()):
            raise DistStoreError(f"keys {keys} did not appear within {timeout.total_seconds():g} s")

    def get(self, key: str) -> bytes:
        self._wait([key])
        return self._main.call(lambda store: store.get(self._prefix + key))

    def multi_get(self, keys: List[str]) -> List[bytes]:
        self._wait(keys)
        return self._main.call(lambda store: store.multi_get([self._prefix + k for k in keys]))

    def set(self, key: str, value) -> None:
        self._main.call(lambda store: store.set(self._prefix + key, value))

    def multi_set(self, keys: List[str], values) -> None:
        self._main.call(lambda store: store.multi_set([self._prefix + k for k in keys], values))

    def add(self, key: str, amount: int) -> int:
        return self._main.call(lambda store: store.add(self._prefix + key, amount))

    def compare_set(self, key: str, expected, desired) -> bytes:
        return self._main.call(lambda store: store.compare_set(self._prefix + key, expected, desired))

    def check(self, keys: List[str]) -> bool:
        return self._main.call(lambda store: store.check([self._prefix + k for k in keys]))

    def delete_key(self, key: str) -> bool:
        return self._main.call(lambda store: store.delete_key(self._prefix + key))

    def num_keys(self) -> int:
        return self._main.call(lambda store: store.num_keys())


class MetaflowRendezvousHandler(RendezvousHandler):
    """Rendezvous of a fixed set of Metaflow nodes; the group rank is the node index.

    Contract:

    - Node 0 (the control task) hosts a TCPStore at ``endpoint``; every node,
      node 0 included, connects to it. Workers reuse it (``use_agent_store``),
      with ``MASTER_ADDR`` the main IP, so the job needs one port.
    - Once it reaches the store, the handler exports ``GLOO_SOCKET_IFNAME`` and
      ``NCCL_SOCKET_IFNAME`` naming the interface that reaches node 0, for the
      workers to inherit, unless the user set them (see ``rendezvous.network``).
    - ``next_rendezvous`` joins round 0 on the first call and the next round on
      each later call (a restart). A round completes when all ``num_nodes``
      nodes arrived; each restart round starts with the workers' keys wiped, so
      no stale address of the previous round leaks into the new one.
    - ``num_nodes_waiting`` is 1 once another node asked for a newer round,
      which makes the agent restart its workers into it without spending a
      restart; it raises ``JobFailedError`` once any node failed.
    - ``shutdown`` reads the in-flight exception (torch calls it from a
      ``finally`` block): with one, this node records why it failed; then it
      raises ``JobFailedError`` if another node's failure is the root cause
      (see ``root_cause``), replacing this node's own or secondary error.

    Raises:
        JoinTimeoutError: not every node arrived within ``join_timeout``.
        JobFailedError: another node failed, or node 0 became unreachable.
        StorePortInUseError, StoreUnreachableError, ForeignJobError,
        TopologyError: see their docstrings.
    """

    def __init__(
        self,
        topology: Topology,
        settings: RendezvousSettings,
        run_id: str,
        host: str,
        port: int,
    ):
        self.topology = topology
        self.settings = settings
        self.run_id = run_id
        self.host = host
        self.port = port
        self.endpoint = format_endpoint(host, port)
        self._namespace = f"{KEY_NAMESPACE}{run_id}/"
        self._server: Optional[TCPStore] = None
        self._main: Optional[BoundedConnection] = None
        self._watcher: Optional[_Watcher] = None
        self._round = -1
        self._closed = False
        atexit.register(self._close_at_exit)

    @property
    def node_index(self) -> int:
        return self.topology.node_index

    @property
    def joined_a_round(self) -> bool:
        return self._round >= 0

    def key(self, name: str) -> str:
        return self._namespace + name

    # torch's RendezvousHandler interface

    def get_backend(self) -> str:
        return BACKEND_NAME

    @property
    def use_agent_store(self) -> bool:
        return True

    def get_run_id(self) -> str:
        return self.run_id

    def is_closed(self) -> bool:
        return self._watcher is not None and self._watcher.failure is not None

    def set_closed(self) -> None:
        self._publish_failure("closed the rendezvous", OWN)

    def next_rendezvous(self) -> RendezvousInfo:
        deadline = time.monotonic() + self.settings.join_timeout
        if self._main is None:
            self._open(deadline)
        target = self._round + 1
        if target > 0:
            # Ask the other nodes to follow; if one already asked, this is a no-op.
            round_key = self.key("round")
            self._main.call(lambda store: store.compare_set(round_key, str(target - 1), str(target)))
        self._join(target, deadline)
        self._round = target
        logger.info(
            "metaflow rendezvous: node %d joined round %d of %s (%d nodes, store %s)",
            self.node_index, target, self.run_id, self.topology.num_nodes, self.endpoint,
        )
        return RendezvousInfo(
            _AgentStore(self._main, self.key(f"r{target}/agent/"), self.settings.join_timeout),
            self.node_index,
            self.topology.num_nodes,
            RendezvousStoreInfo(master_addr=self.host, master_port=self.port),
        )

    def num_nodes_waiting(self) -> int:
        self._raise_if_failed()
        return 1 if self._watcher.latest_round > self._round else 0

    def shutdown(self) -> bool:
        in_flight = sys.exc_info()[1]
        if in_flight is not None and not isinstance(in_flight, JobFailedError):
            reason, kind = describe_failure(in_flight)
            self._publish_failure(reason, kind)
            if kind == PEER_LOST:
                self._await_root_cause()
        # Closing reads the failure records again: by now the root cause has
        # had the time it took to stop the workers to be recorded.
        self._close()
        failure = self._failure()
        if failure is not None and failure.node_index != self.node_index:
            raise failure
        return True

    # Rounds

    def _open(self, deadline: float) -> None:
        """Host (node 0) or reach the store, check it is this job's, start the watcher."""
        timeout = self.settings.heartbeat_timeout
        if self.topology.is_control:
            self._server = host_store(self.host, self.port, timeout)
            beats = [self.key(f"hb/{i}") for i in range(self.topology.num_nodes)]
            self._server.multi_set(beats + [self.key("round")], ["0"] * (len(beats) + 1))
            # Set last: the other nodes take it as "the store is ready".
            self._server.compare_set(JOB_KEY, "", self.run_id)
            store: Store = self._server
        else:
            if not wait_until_listening(self.host, self.port, deadline):
                raise self._join_timeout(0, [0])
            store = connect_store(self.host, self.port, timeout)
        self._main = BoundedConnection(store, self.endpoint, timeout, abort=self._failure)
        if not self._main.wait([JOB_KEY], deadline):
            raise self._join_timeout(0, [0])
        owner = self._main.call(lambda store: store.get(JOB_KEY)).decode()
        if owner != self.run_id:
            raise ForeignJobError(
                f"the rendezvous store at {self.endpoint} belongs to job {owner!r}, not to "
                f"{self.run_id!r}: two jobs share one store port. Give each job its own "
                f"--rdzv-id (or its own master_port in @torchrun)."
            )
        side = BoundedConnection(connect_store(self.host, self.port, timeout), self.endpoint, timeout)
        self._watcher = _Watcher(self, side)
        self._watcher.start()
        self._export_socket_ifname()

    def _export_socket_ifname(self) -> None:
        """Point the workers' gloo and NCCL at the interface that reaches node 0.

        Workers inherit the agent's environment; see ``rendezvous.network``.
        """
        chosen, interface = socket_ifname_defaults(self.host, self.port, os.environ)
        os.environ.update(chosen)
        if interface is not None:
            logger.info(
                "metaflow rendezvous: node %d reaches the store at %s through %s; set for the "
                "workers: %s", self.node_index, self.endpoint, interface,
                " ".join(f"{name}={value}" for name, value in chosen.items()) or "nothing",
            )

    def _join(self, round_: int, deadline: float) -> None:
        num_nodes = self.topology.num_nodes
        members_key = self.key(f"r{round_}/members")
        count_key = self.key(f"r{round_}/count")
        complete_key = self.key(f"r{round_}/complete")
        self._main.call(lambda store: store.append(members_key, f"{self.node_index},"))
        if self._main.call(lambda store: store.add(count_key, 1)) < num_nodes:
            if not self._main.wait([complete_key], deadline):
                arrived = set(self._members(self._watcher.side, round_))
                raise self._join_timeout(round_, sorted(set(range(num_nodes)) - arrived))
            return
        members = self._members(self._main, round_)
        if sorted(members) != list(range(num_nodes)):
            duplicates = sorted({i for i in members if members.count(i) > 1})
            reason = (
                f"two agents claim node index {', '.join(map(str, duplicates))}; "
                f"every node needs its own MF_PARALLEL_NODE_INDEX"
            )
            self._publish_failure(reason, OWN)
            raise TopologyError(reason + ".")
        if round_ > 0:
            self._main.call(wipe_worker_keys)
        self._main.call(lambda store: store.set(complete_key, "1"))

    def _members(self, connection: BoundedConnection, round_: int) -> List[int]:
        key = self.key(f"r{round_}/members")
        raw = connection.call(lambda store: store.get(key)).decode()
        return [int(item) for item in raw.split(",") if item]

    def _join_timeout(self, round_: int, missing: List[int]) -> JoinTimeoutError:
        names = ", ".join(map(str, missing))
        hint = (
            " Node 0 hosts the store; it never came up."
            if 0 in missing and not self.topology.is_control
            else ""
        )
        # The list ends the message so that tools can cut it off the end.
        return JoinTimeoutError(
            f"round {round_} of rendezvous {self.run_id!r} did not complete within "
            f"join_timeout={self.settings.join_timeout:g} s.{hint} Check that the missing "
            f"nodes started (their logs say why not), or raise --rdzv-conf join_timeout; "
            f"missing nodes: {names}",
            missing,
        )

    # Failing

    def _failure(self) -> Optional[JobFailedError]:
        return None if self._watcher is None else self._watcher.failure

    def _raise_if_failed(self) -> None:
        failure = self._failure()
        if failure is not None:
            raise failure

    def _await_root_cause(self) -> None:
        """Give the node whose failure made this one's workers lose a peer a moment to say so."""
        deadline = time.monotonic() + _ROOT_CAUSE_GRACE
        try:
            while time.monotonic() < deadline:
                if any(record.kind == OWN for record in self._watcher.read_failures()):
                    return
                time.sleep(0.05)
        except StoreUnreachableError:
            return  # node 0 is gone: nobody can say more

    def _publish_failure(self, reason: str, kind: str) -> None:
        if self._watcher is not None:
            self._watcher.publish_failure(reason, self.node_index, kind)

    # Closing

    def _close(self) -> None:
        """Stop the watcher, count this node as closed; node 0 waits for the others."""
        watcher = self._watcher
        if self._closed or watcher is None:
            self._closed = True
            return
        self._closed = True
        watcher.stop()
        closed_key = self.key("closed")
        try:
            watcher.failure = watcher.read_failure() or watcher.failure
            closed = watcher.side.call(lambda store: store.add(closed_key, 1))
            if self.topology.is_control:
                self._wait_for_others_to_close(watcher.side, closed)
        except StoreUnreachableError:
            pass  # node 0 already went away: nothing left to tell it

    def _wait_for_others_to_close(self, side: BoundedConnection, closed: int) -> None:
        # Only nodes that sent heartbeats and did not fall silent can close; one
        # that never came (a join timeout) or died must not hold node 0 up.
        beats = [self.key(f"hb/{i}") for i in range(self.topology.num_nodes)]
        counts = side.call(lambda store: store.multi_get(beats))
        expected = sum(
            1
            for node, count in enumerate(counts)
            if int(count) and node not in self._watcher.silent_nodes
        )
        closed_key = self.key("closed")
        deadline = time.monotonic() + self.settings.close_timeout
        while closed < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            closed = side.call(lambda store: store.add(closed_key, 0))

    def _close_at_exit(self) -> None:
        """Tell the other nodes if this agent exits without ``shutdown`` (a signal)."""
        if not self._closed and self._watcher is not None:
            self._publish_failure(
                "its torchrun agent exited before the job finished (stopped by a signal?)", OWN
            )
            self._close()


def wipe_worker_keys(store: Store) -> None:
    """Delete every key the previous round's workers left, so a restart round starts clean.

    All workers are stopped at this point: every node is inside
    ``next_rendezvous``, which the agent calls only after stopping them.
    """
    for key in store.list_keys():
        if not key.startswith(KEY_NAMESPACE):
            store.delete_key(key)


def create_handler(params: RendezvousParameters) -> MetaflowRendezvousHandler:
    """Build the handler from torchrun's parameters and the Metaflow environment.

    Raises:
        TopologyError: the environment is incomplete or ``--nnodes`` differs
            from the number of Metaflow nodes.
        ConfigError: a bad ``--rdzv-conf`` or ``--rdzv-endpoint``.
    """
    topology = read_topology()
    settings = RendezvousSettings.from_config(params.config)
    if not params.min_nodes == params.max_nodes == topology.num_nodes:
        given = (
            str(params.min_nodes)
            if params.min_nodes == params.max_nodes
            else f"{params.min_nodes}:{params.max_nodes}"
        )
        raise TopologyError(
            f"--nnodes={given}, but this Metaflow step runs {topology.num_nodes} nodes "
            f"({NUM_NODES_VAR}={topology.num_nodes}). The metaflow backend has a fixed "
            f"membership: pass --nnodes={topology.num_nodes}."
        )
    # A port the compute layer declared for node 0 (@kubernetes(port=...)) is
    # the one its network policy opens; a port in the endpoint wins over it.
    default_port = topology.declared_port or derive_port(params.run_id)
    host, port = parse_endpoint(params.endpoint, topology.main_ip, default_port)
    return MetaflowRendezvousHandler(topology, settings, params.run_id, host, port)


__all__ = [
    "BACKEND_NAME",
    "MetaflowRendezvousError",
    "MetaflowRendezvousHandler",
    "create_handler",
    "describe_failure",
]
