"""The rounds of one job in its store: joining a round, asking for a restart, finishing.

``Rounds`` is the part of the handler that writes and reads the round keys
(``rendezvous.keys``); the handler keeps the life cycle (opening the store,
the watcher, failing, closing).
"""

from typing import List, Optional

from torch.distributed import Store, TCPStore

from .errors import (
    JoinTimeoutError,
    MetaflowRendezvousError,
    RestartAfterFinishError,
    TopologyError,
    restart_after_finish_reason,
)
from .keys import JobKeys
from .settings import RendezvousSettings
from .store import BoundedConnection, host_store, wipe_worker_keys
from .topology import Topology
from .torch_compat import STORE_LISTS_KEYS
from .watcher import Watcher, wake_every_node


class Rounds:
    """This node's part in the job's rounds, through its two connections to node 0's store.

    Contract:

    - ``join(k)`` arrives in round ``k`` and returns once every node arrived;
      the last to arrive checks that each node index came once (else
      ``TopologyError``, recorded for every node), wipes the previous round's
      worker keys (restart rounds, where the store lists its keys) and marks
      the round complete. Not every node within the deadline:
      ``JoinTimeoutError`` naming the missing ones.
    - ``ask_for(k)``, before a restart: the first node to ask wakes every node
      into round ``k``; it returns the nodes whose workers all finished, which
      never follow.
    - ``workers_finished(current)`` marks this node finished; a restart asked
      meanwhile fails the job with ``RestartAfterFinishError``, since the node
      that asked would wait ``join_timeout`` for this one. Of a restart and a
      finish at the same time, each marks before reading the other's key, so at
      least one side sees the other.
    """

    def __init__(self, keys: JobKeys, topology: Topology, settings: RendezvousSettings,
                 host: str, port: int, main: BoundedConnection, side: BoundedConnection,
                 watcher: Watcher):
        self._keys = keys
        self._topology = topology
        self._settings = settings
        self._host = host
        self._port = port
        self._main = main
        self._side = side
        self._watcher = watcher

    def ask_for(self, round_: int) -> List[int]:
        """Ask every node to follow into ``round_``; the nodes whose workers had all finished."""
        keys = self._keys

        def ask(store: Store) -> List[int]:
            if store.add(keys.asked(round_), 1) == 1:
                wake_every_node(
                    store, keys, self._topology.num_nodes,
                    {keys.round: str(round_), keys.asked_by(round_): str(self._topology.node_index)},
                )
            return _node_list(store.get(keys.finished)) if store.check([keys.finished]) else []

        return self._main.call(ask)

    def workers_finished(self, current: int) -> None:
        """This node's workers all succeeded in round ``current``. Never raises: torch's exit
        barrier follows either way."""
        keys = self._keys
        node = self._topology.node_index

        def mark_finished(store: Store) -> "tuple[int, Optional[str]]":
            store.append(keys.finished, f"{node},")
            requested = int(store.get(keys.round))
            asker = store.get(keys.asked_by(requested)).decode() if requested > current else None
            return requested, asker

        try:
            requested, asker = self._main.call(mark_finished)
        except MetaflowRendezvousError:
            return  # node 0 is gone or the job failed: shutdown() says so
        if asker is not None:
            refused = RestartAfterFinishError(restart_after_finish_reason(requested, [node]) + ".")
            self._watcher.publish_failure(refused.failure(int(asker)))

    def host_worker_store(self, round_: int) -> Optional[TCPStore]:
        """Node 0, for restart round ``round_`` where the store cannot list its keys:
        start a fresh store for the round's workers and name its port in the store.

        Done before node 0 arrives in the round, so the port is known by the time
        the round completes; None on every other node and where keys are wiped.
        """
        if STORE_LISTS_KEYS or not self._topology.is_control:
            return None
        server = host_store(self._host, 0, self._settings.heartbeat_timeout)
        port_key = self._keys.worker_port(round_)
        self._main.call(lambda store: store.set(port_key, str(server.port)))
        return server

    def workers_port(self, round_: int) -> int:
        """The port the workers of round ``round_`` reach their store on (their ``MASTER_PORT``)."""
        if round_ == 0 or STORE_LISTS_KEYS:
            return self._port
        port_key = self._keys.worker_port(round_)
        return int(self._main.call(lambda store: store.get(port_key)))

    def join(self, round_: int, deadline: float) -> None:
        num_nodes = self._topology.num_nodes
        node = self._topology.node_index
        members_key = self._keys.members(round_)
        count_key = self._keys.count(round_)
        complete_key = self._keys.complete(round_)

        def arrive(store: Store) -> int:
            store.append(members_key, f"{node},")
            return store.add(count_key, 1)

        if self._main.call(arrive) < num_nodes:
            if not self._main.wait([complete_key], deadline):
                arrived = set(self._members(self._side, round_))
                raise join_timeout(self._keys.run_id, self._settings, self._topology, round_,
                                   sorted(set(range(num_nodes)) - arrived))
            return
        members = self._members(self._main, round_)
        if sorted(members) != list(range(num_nodes)):
            duplicates = sorted({i for i in members if members.count(i) > 1})
            reason = (
                f"two agents claim node index {', '.join(map(str, duplicates))}; "
                f"every node needs its own MF_PARALLEL_NODE_INDEX"
            )
            error = TopologyError(reason + ".")
            self._watcher.publish_failure(error.failure(node))
            raise error
        if round_ > 0 and STORE_LISTS_KEYS:
            namespace = self._keys.namespace
            self._main.call(lambda store: wipe_worker_keys(store, namespace))
        self._main.call(lambda store: store.set(complete_key, "1"))

    def _members(self, connection: BoundedConnection, round_: int) -> List[int]:
        key = self._keys.members(round_)
        return _node_list(connection.call(lambda store: store.get(key)))


def join_timeout(run_id: str, settings: RendezvousSettings, topology: Topology, round_: int,
                 missing: List[int]) -> JoinTimeoutError:
    """The error for round ``round_`` of ``run_id`` left incomplete by the ``missing`` nodes."""
    names = ", ".join(map(str, missing))
    hint = (
        " Node 0 hosts the store; it never came up."
        if 0 in missing and not topology.is_control
        else ""
    )
    # The list ends the message so that tools can cut it off the end.
    return JoinTimeoutError(
        f"round {round_} of rendezvous {run_id!r} did not complete within "
        f"join_timeout={settings.join_timeout:g} s.{hint} Check that the missing "
        f"nodes started (their logs say why not), or raise --rdzv-conf join_timeout; "
        f"missing nodes: {names}",
        missing,
    )


def _node_list(raw: bytes) -> List[int]:
    """Node indexes as appended to a key: ``"0,2,1,"``."""
    return [int(item) for item in raw.decode().split(",") if item]


__all__ = ["Rounds", "join_timeout"]
