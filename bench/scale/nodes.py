"""The child side: node 0's process, and processes that each host many simulated nodes.

Every node is a real handler: a ``MetaflowRendezvousHandler`` with its real
watcher and store connections, or torch's ``c10d`` handler built through the
registry as torchrun builds it. What a process adds is one "agent" loop for all its nodes,
which does what torch's agent does while workers are healthy: ask every node's
``num_nodes_waiting()`` every ``monitor_interval`` seconds, follow a restart
into the next round, and stop the node when it raises ``JobFailedError``.

Commands come from the parent over a pipe, and every event goes back over it
as ``(kind, node, monotonic time)``; the parent and its children share the
monotonic clock.
"""

import os
import resource
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Dict, List

from metaflow_extensions.torchrun.plugins.worker_bootstrap import die_with_parent
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

from rendezvous.errors import JobFailedError
from rendezvous.handler import MetaflowRendezvousHandler
from rendezvous.settings import RendezvousSettings
from rendezvous.topology import Topology

from bench.store_ports import LOOPBACK

# What torch's agent polls at while workers are healthy (its monitor_interval).
MONITOR_INTERVAL = 0.1


def make_handler(backend: str, index: int, num_nodes: int, port: int, run_id: str,
                 settings: RendezvousSettings) -> RendezvousHandler:
    """Node ``index``'s handler of the given backend, its store at ``port`` on loopback."""
    if backend == "metaflow":
        return MetaflowRendezvousHandler(
            Topology(index, num_nodes, LOOPBACK), settings, run_id, LOOPBACK, port)
    # Without is_host, c10d guesses the host by comparing the endpoint with this
    # machine's names, which every node on one machine matches; without
    # local_addr it names nodes by socket.getfqdn().
    return get_rendezvous_handler(RendezvousParameters(
        backend=backend, endpoint=f"{LOOPBACK}:{port}", run_id=run_id, min_nodes=num_nodes,
        max_nodes=num_nodes, local_addr=LOOPBACK, is_host=str(index == 0).lower(),
        join_timeout=str(int(settings.join_timeout))))


class _Host:
    """The nodes of one process, the agent loop over them, and the pipe to the parent."""

    def __init__(self, pipe: Connection, backend: str, indices: List[int], num_nodes: int,
                 port: int, run_id: str, settings: RendezvousSettings):
        self._pipe = pipe
        self._send_lock = threading.Lock()
        self._handlers: Dict[int, RendezvousHandler] = {
            index: make_handler(backend, index, num_nodes, port, run_id, settings)
            for index in indices
        }
        self._active = set(indices)  # nodes the agent loop still watches
        self._restarting = set()
        self._lock = threading.Lock()

    def send(self, kind: str, node: int, value: float = 0.0) -> None:
        with self._send_lock:
            self._pipe.send((kind, node, value))

    def _join(self, index: int, kind: str) -> None:
        try:
            self._handlers[index].next_rendezvous()
            self.send(kind, index, time.monotonic())
        except BaseException as error:  # reported; the parent fails the measurement
            self.send("error", index, f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self._restarting.discard(index)

    def join_all(self) -> None:
        """Every node calls ``next_rendezvous()`` at once, each from a thread of its own."""
        threads = [threading.Thread(target=self._join, args=(index, "round"), daemon=True)
                   for index in self._handlers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        threading.Thread(target=self._agent_loop, daemon=True).start()

    def _agent_loop(self) -> None:
        while True:
            time.sleep(MONITOR_INTERVAL)
            with self._lock:
                watched = sorted(self._active - self._restarting)
            for index in watched:
                try:
                    waiting = self._handlers[index].num_nodes_waiting()
                except JobFailedError:
                    self.send("stopped", index, time.monotonic())
                    with self._lock:
                        self._active.discard(index)
                    continue
                if waiting:
                    with self._lock:
                        self._restarting.add(index)
                    threading.Thread(target=self._join, args=(index, "restart"),
                                     daemon=True).start()

    def restart(self, index: int) -> None:
        """Node ``index`` asks for a new round, as an agent whose workers failed does."""
        with self._lock:
            self._restarting.add(index)
        self.send("restart_asked", index, time.monotonic())
        self._join(index, "restart")

    def fail(self, index: int) -> None:
        """Node ``index`` gives up with an error in flight, as torch's agent does when a rank raised."""
        with self._lock:
            self._active.discard(index)
        self.send("failed", index, time.monotonic())
        try:
            raise RuntimeError("bench.scale: a rank raised")
        except RuntimeError:
            self._handlers[index].shutdown()


def host_process(pipe: Connection, backend: str, indices: List[int], num_nodes: int, port: int,
                 run_id: str, settings: RendezvousSettings, parent_pid: int) -> None:
    """Entry of a forked child hosting ``indices``; obeys the parent's commands until told to go."""
    status = 1
    try:
        die_with_parent(signal.SIGKILL, parent_pid)
        if 0 not in indices:
            # On a cluster node 0 has a machine of its own; here it shares two
            # cores with thousands of simulated nodes' threads, which must not
            # starve its store's thread while they connect.
            os.nice(19)
        host = _Host(pipe, backend, indices, num_nodes, port, run_id, settings)
        host.send("ready", indices[0])
        while True:
            command, argument = pipe.recv()
            if command == "join":
                threading.Thread(target=host.join_all, daemon=True).start()
            elif command == "cpu":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                host.send("cpu", indices[0], usage.ru_utime + usage.ru_stime)
            elif command == "restart":
                threading.Thread(target=host.restart, args=(argument,), daemon=True).start()
            elif command == "fail":
                threading.Thread(target=host.fail, args=(argument,), daemon=True).start()
            elif command == "exit":
                break
        status = 0
    except BaseException as error:
        try:
            pipe.send(("error", indices[0], f"{type(error).__name__}: {error}"))
        except OSError:
            pass
    finally:
        os._exit(status)
