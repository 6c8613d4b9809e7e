"""The ``metaflow`` rendezvous handler: fixed membership, node 0 hosts the store.

The keys it uses in the store are named in ``rendezvous.keys``, and written
for the rounds by ``rendezvous.rounds``; the failure records
(``rendezvous.failure.Failure``) are in ``rendezvous.failures``; the thread
that watches the other nodes is ``rendezvous.watcher``.
"""

import atexit
import logging
import os
import sys
import time
from typing import Optional

from torch.distributed import Store, TCPStore
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousStoreInfo,
)

from . import BACKEND_NAME
from .endpoint import format_endpoint
from .errors import (
    ForeignJobError,
    JobFailedError,
    RestartAfterFinishError,
    StoreUnreachableError,
    restart_after_finish_reason,
)
from .failure import Failure, FailureKind
from .failures import agent_failure
from .hangs.records import HangReport
from .hangs.probe import DIRECTORY_VAR as HANG_DIRECTORY_VAR
from .hangs.watch import HangWatch
from .keys import JobKeys
from .network import socket_ifname_defaults
from .outcome import stop_reason
from .settings import RendezvousSettings
from .store import (
    AgentStore,
    BoundedConnection,
    connect_store,
    host_store,
    wait_until_listening,
)
from .rounds import Rounds, join_timeout
from .topology import Topology
from .watcher import Watcher

logger = logging.getLogger(__name__)

# How long a node whose workers only lost a peer waits for the failure that
# caused it to be recorded by its own node.
_ROOT_CAUSE_GRACE = 2.0


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
      no stale address of the previous round leaks into the new one. Where
      torch's store cannot list its keys (``rendezvous.torch_compat``), node 0
      hosts a fresh store for each restart round's workers instead, on a port
      the system picks, which becomes their ``MASTER_PORT``.
    - A node whose workers all succeeded never joins another round: when one
      node asks for a restart round after another node's workers finished (in
      either order), the job fails at once with ``RestartAfterFinishError``
      naming both, instead of the restart waiting ``join_timeout``.
    - ``num_nodes_waiting`` is 1 once another node asked for a newer round,
      which makes the agent restart its workers into it without spending a
      restart; it raises ``JobFailedError`` once any node failed.
    - ``shutdown`` reads the in-flight exception (torch calls it from a
      ``finally`` block): with one, this node records why it failed; then it
      raises ``JobFailedError`` if another node's failure is the root cause
      (see ``rendezvous.failures.root_cause``), replacing this node's own or
      secondary error, unless that failure is already the one in flight.

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
        self._keys = JobKeys(run_id)
        self._server: Optional[TCPStore] = None
        # Keeps the store of the current restart round's workers listening (torch before 2.10).
        self._worker_server: Optional[TCPStore] = None
        self._main: Optional[BoundedConnection] = None
        self._side: Optional[BoundedConnection] = None
        self._watcher: Optional[Watcher] = None
        self._rounds: Optional[Rounds] = None
        self._hangs: Optional[HangWatch] = None
        self._round = -1
        self._closed = False
        atexit.register(self._close_at_exit)

    @property
    def node_index(self) -> int:
        return self.topology.node_index

    @property
    def round(self) -> int:
        """The round joined last: k after the job's k-th restart (-1 before the first)."""
        return self._round

    def joined_a_round(self) -> bool:
        """Whether this node is past its first round (it completed once)."""
        return self._round >= 0

    # torch's RendezvousHandler interface

    def get_backend(self) -> str:
        return BACKEND_NAME

    @property
    def use_agent_store(self) -> bool:
        return True

    def get_run_id(self) -> str:
        return self.run_id

    def is_closed(self) -> bool:
        return self._watcher is not None and self._watcher.failure() is not None

    def set_closed(self) -> None:
        self._publish_failure(FailureKind.STOPPED, "it closed the rendezvous")

    def next_rendezvous(self) -> RendezvousInfo:
        deadline = time.monotonic() + self.settings.join_timeout
        if self._main is None:
            self._open(deadline)
        target = self._round + 1
        worker_server = None
        if target > 0:
            finished = self._rounds.ask_for(target)
            if finished:
                raise RestartAfterFinishError(restart_after_finish_reason(target, finished) + ".")
            worker_server = self._rounds.host_worker_store(target)
        self._rounds.join(target, deadline)
        self._round = target
        if worker_server is not None:
            # Every worker of the previous round is stopped now: its store can go.
            self._worker_server = worker_server
        logger.info(
            "metaflow rendezvous: node %d joined round %d of %s (%d nodes, store %s)",
            self.node_index, target, self.run_id, self.topology.num_nodes, self.endpoint,
        )
        return RendezvousInfo(
            AgentStore(
                self._main, self._keys.agent_prefix(target), self.settings.join_timeout,
                workers_finished=lambda: self._rounds.workers_finished(target),
            ),
            self.node_index,
            self.topology.num_nodes,
            RendezvousStoreInfo(master_addr=self.host, master_port=self._rounds.workers_port(target)),
        )

    def num_nodes_waiting(self) -> int:
        self._raise_if_failed()
        return 1 if self._watcher.requested_round() > self._round else 0

    def shutdown(self) -> bool:
        in_flight = sys.exc_info()[1]
        if in_flight is not None and not isinstance(in_flight, JobFailedError):
            failure = agent_failure(in_flight, self.node_index)
            self._watcher_publish(failure)
            if failure.secondary:
                self._await_root_cause()
        # Closing reads the failure records again: by now the root cause has
        # had the time it took to stop the workers to be recorded.
        self._close()
        failure = self.root_cause_elsewhere()
        if failure is not None and not _same_failure(in_flight, failure):
            raise failure
        return True

    def root_cause_elsewhere(self) -> Optional[JobFailedError]:
        """The job's root cause when another node failed first, else None.

        ``shutdown`` raises it; where torch's launcher drops what ``shutdown``
        raises (see ``rendezvous.torch_compat``), ``python -m rendezvous`` asks here.
        """
        failure = self._failure()
        return failure if failure is not None and failure.node_index != self.node_index else None

    # Rounds

    def _open(self, deadline: float) -> None:
        """Host (node 0) or reach the store, check it is this job's, start the watcher."""
        timeout = self.settings.heartbeat_timeout
        if self.topology.is_control:
            self._server = host_store(self.host, self.port, timeout)
            beats = [self._keys.heartbeat(i) for i in range(self.topology.num_nodes)]
            self._server.multi_set(
                beats + [self._keys.round, self._keys.failures],
                ["0"] * (len(beats) + 1) + [""],
            )
            # Set last: the other nodes take it as "the store is ready".
            self._server.compare_set(self._keys.job, "", self.run_id)
            store: Store = self._server
        else:
            if not wait_until_listening(self.host, self.port, deadline):
                raise join_timeout(self.run_id, self.settings, self.topology, 0, [0])
            store = connect_store(self.host, self.port, timeout)
        self._main = BoundedConnection(store, self.endpoint, timeout)
        job_key = self._keys.job
        owner_raw = self._main.wait_then([job_key], deadline, lambda store: store.get(job_key))
        if owner_raw is None:
            raise join_timeout(self.run_id, self.settings, self.topology, 0, [0])
        owner = owner_raw.decode()
        if owner != self.run_id:
            raise ForeignJobError(
                f"the rendezvous store at {self.endpoint} belongs to job {owner!r}, not to "
                f"{self.run_id!r}: two jobs share one store port. Give each job its own "
                f"--rdzv-id (or its own master_port in @torchrun)."
            )
        self._side = BoundedConnection(
            connect_store(self.host, self.port, timeout), self.endpoint, timeout
        )
        self._watcher = Watcher(
            self._keys, self.settings, self.topology, self._side, joined=self.joined_a_round,
            host=self.host, port=self.port, on_failure=self._main.abort,
        )
        self._watcher.start()
        self._rounds = Rounds(self._keys, self.topology, self.settings, self.host, self.port,
                              self._main, self._side, self._watcher)
        self._export_socket_ifname()
        if self.settings.hang_timeout:
            self._hangs = HangWatch(
                self._keys, self.settings, self.topology, self.host, self.port,
                watcher=self._watcher,
                directory=os.environ.get(HANG_DIRECTORY_VAR),
            )
            self._hangs.start()
            os.environ.update(self._hangs.worker_environment(os.environ))

    def last_hang_report(self) -> Optional[HangReport]:
        """The newest hang report this node received (``rendezvous.hangs``), None before one."""
        return None if self._hangs is None else self._hangs.last_report()

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

    # Failing

    def _failure(self) -> Optional[JobFailedError]:
        return None if self._watcher is None else self._watcher.failure()

    def _raise_if_failed(self) -> None:
        failure = self._failure()
        if failure is not None:
            raise failure

    def _await_root_cause(self) -> None:
        """Give the node whose failure made this one's workers lose a peer a moment to say so."""
        deadline = time.monotonic() + _ROOT_CAUSE_GRACE
        try:
            while time.monotonic() < deadline:
                if any(not record.secondary for record in self._watcher.failure_records()):
                    return
                time.sleep(0.05)
        except StoreUnreachableError:
            return  # node 0 is gone: nobody can say more

    def _publish_failure(self, kind: FailureKind, message: str) -> None:
        """Record that this node failed (``kind``, ``message``), if it reached the store."""
        self._watcher_publish(Failure(kind, message, self.node_index))

    def _watcher_publish(self, failure: Failure) -> None:
        if self._watcher is not None:
            self._watcher.publish_failure(failure)

    # Closing

    def _close(self) -> None:
        """Stop the watcher, count this node as closed; node 0 waits for the others."""
        watcher = self._watcher
        if self._closed or watcher is None:
            self._closed = True
            return
        self._closed = True
        watcher.stop()
        if self._hangs is not None:
            self._hangs.stop()
        closed_key = self._keys.closed
        try:
            watcher.reread_failure()
            closed = self._side.call(lambda store: store.add(closed_key, 1))
            if self.topology.is_control:
                watcher.wait_for_others_to_close(closed, self.settings.close_timeout)
        except StoreUnreachableError:
            pass  # node 0 already went away: nothing left to tell it

    def _close_at_exit(self) -> None:
        """Tell the other nodes if this agent exits without ``shutdown`` (a signal)."""
        if not self._closed and self._watcher is not None:
            self._publish_failure(FailureKind.STOPPED, stop_reason(
                "its torchrun agent exited before the job finished (stopped by a signal?)"
            ))
            self._close()


def _same_failure(error: Optional[BaseException], failure: JobFailedError) -> bool:
    """Whether ``error`` already is the job's ``failure``: raising it again adds nothing."""
    return isinstance(error, JobFailedError) and error.record == failure.record


__all__ = ["MetaflowRendezvousHandler"]
