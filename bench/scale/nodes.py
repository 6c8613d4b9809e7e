"""The child side: node 0's process, and processes that each host many simulated nodes.

Every node is a real handler: a ``MetaflowRendezvousHandler`` with its real
watcher and store connections (or, with ``inline_calls``, connections whose
calls run on the calling thread: ``InlineConnection``), or torch's ``c10d``
handler built through the registry as torchrun builds it. What a process adds is one "agent" loop for all its nodes,
which does what torch's agent does while workers are healthy: ask every node's
``num_nodes_waiting()`` every ``monitor_interval`` seconds, follow a restart
into the next round, and stop the node when it raises ``JobFailedError``.

Commands come from the parent over a pipe, and every event goes back over it
as ``(kind, node, monotonic time)``; the parent and its children share the
monotonic clock.
"""

import json
import os
import queue
import resource
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable, Dict, List

from metaflow_extensions.torchrun.plugins.worker.bootstrap import die_with_parent
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

import rendezvous.handler as handler_module
from rendezvous.errors import JobFailedError
from rendezvous.handler import MetaflowRendezvousHandler
from rendezvous.settings import RendezvousSettings
from rendezvous.store import BoundedConnection
from rendezvous.topology import Topology

from bench.store_ports import LOOPBACK

# A failing rank's long traceback: the 20 lines of its end that the failure
# record carries, and every node reads, are 2.3 KB (a typical one has 1-1.5 KB).
_FAILING_RANK_TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/workspace/project/src/training/loops/distributed_loop_{line:02d}.py", '
    f"line {100 + line}, in step\n"
    f"    loss = criterion(model(batch.inputs), batch.targets) + sum(regularizer(p) "
    f"for p in model.parameters()) * weight[{line}] + auxiliary_loss(model, batch)\n"
    for line in range(1, 24)
) + "ValueError: bench.scale: a rank raised"
# What torch's agent polls at while workers are healthy (its monitor_interval).
MONITOR_INTERVAL = 0.1
# The GIL's switch interval in processes of simulated nodes (see host_process).
_SWITCH_INTERVAL = 1.0


class InlineConnection(BoundedConnection):
    """A node's connection to node 0's store whose calls run on the calling thread.

    The same handler and watcher code makes the same requests over it, in the
    same order, as over a ``BoundedConnection``: only the thread that sends
    them differs. A real node hands each call to a thread of the connection,
    which bounds it by a deadline; that costs two thread switches per call,
    which on a node's own machine is nothing, but simulated by the thousand on
    two cores is more CPU than the requests themselves. The bound is not
    needed here: the only node that goes silent (SIGSTOP) is one that no other
    node calls, and node 0, which every node calls, keeps real connections.
    """

    def _start_worker(self) -> Callable[[object], None]:
        return self._run


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
    """The nodes of one process, the agent loop over them, and the pipe to the parent.

    Each node has a thread of its own that calls ``next_rendezvous()`` when
    told to, as a torchrun agent's main thread does: started with the process,
    so that starting it is no part of a round (a real agent's thread exists
    before it joins).
    """

    def __init__(self, pipe: Connection, backend: str, indices: List[int], num_nodes: int,
                 port: int, run_id: str, settings: RendezvousSettings):
        self._pipe = pipe
        self._send_lock = threading.Lock()
        self._handlers: Dict[int, RendezvousHandler] = {
            index: make_handler(backend, index, num_nodes, port, run_id, settings)
            for index in indices
        }
        self._active = set(indices)  # nodes the agent loop still watches
        self._restarting = set(indices)  # nodes in next_rendezvous(), or told to call it
        self._lock = threading.Lock()
        self._told: Dict[int, "queue.SimpleQueue[str]"] = {
            index: queue.SimpleQueue() for index in indices}
        for index in indices:
            threading.Thread(target=self._agent_thread, args=(index,), daemon=True).start()

    def send(self, kind: str, node: int, value: float = 0.0) -> None:
        with self._send_lock:
            self._pipe.send((kind, node, value))

    def _agent_thread(self, index: int) -> None:
        """Node ``index``'s agent: join a round each time it is told to (the kind of event to send)."""
        while True:
            self._join(index, self._told[index].get())

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
        """Every node calls ``next_rendezvous()`` at once, each from its agent thread."""
        for told in self._told.values():
            told.put("round")
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
                    self._told[index].put("restart")

    def restart(self, index: int) -> None:
        """Node ``index`` asks for a new round, as an agent whose workers failed does."""
        with self._lock:
            self._restarting.add(index)
        self.send("restart_asked", index, time.monotonic())
        self._told[index].put("restart")

    def fail(self, index: int) -> None:
        """Node ``index`` gives up with an error in flight, as torch's agent does when a rank raised.

        The error is torch's ``ChildFailedError`` for a rank whose error file
        holds a traceback as long as a failure record carries, so every node
        reads a record of the size a real failure writes.
        """
        with self._lock:
            self._active.discard(index)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as error_file:
            json.dump({"message": {"message": "ValueError: bench.scale: a rank raised",
                                   "extraInfo": {"py_callstack": _FAILING_RANK_TRACEBACK,
                                                 "timestamp": str(int(time.time()))}}},
                      error_file)
        failure = ProcessFailure(local_rank=0, pid=0, exitcode=1, error_file=error_file.name)
        self.send("failed", index, time.monotonic())
        try:
            raise ChildFailedError("train.py", {index: failure})
        except ChildFailedError:
            self._handlers[index].shutdown()
        finally:
            os.unlink(error_file.name)


def host_process(pipe: Connection, backend: str, indices: List[int], num_nodes: int, port: int,
                 run_id: str, settings: RendezvousSettings, parent_pid: int,
                 inline_calls: bool) -> None:
    """Entry of a forked child hosting ``indices``; obeys the parent's commands until told to go.

    With ``inline_calls``, the metaflow handlers of nodes other than node 0
    run their store calls on the calling thread (``InlineConnection``).
    """
    status = 1
    try:
        die_with_parent(signal.SIGKILL, parent_pid)
        if 0 not in indices:
            # On a cluster node 0 has a machine of its own; here it shares two
            # cores with thousands of simulated nodes' threads, which must not
            # starve its store's thread while they connect.
            os.nice(19)
            # A real node is one handler in a process of its own, whose few
            # threads mostly block. Here hundreds of nodes' threads share one
            # GIL, and a thread that waits for it more than the switch interval
            # forces a switch: with hundreds runnable at once (every node told
            # to join, or woken by one store answer) those forced switches cost
            # more CPU than the nodes' work. Each thread here blocks within
            # microseconds anyway, so switching at those points is enough.
            sys.setswitchinterval(_SWITCH_INTERVAL)
            if inline_calls:
                handler_module.BoundedConnection = InlineConnection
        host = _Host(pipe, backend, indices, num_nodes, port, run_id, settings)
        host.send("ready", indices[0])
        while True:
            command, argument = pipe.recv()
            if command == "join":
                host.join_all()
            elif command == "cpu":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                host.send("cpu", indices[0], usage.ru_utime + usage.ru_stime)
            elif command == "restart":
                host.restart(argument)
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
