"""Node 0's TCPStore, the other nodes' connections to it with calls that always end,
and the view of it that torch's agent gets for one round.

Waiting in short slices instead of in a helper thread would make TCPStore log a
warning per slice, hence ``BoundedConnection``.
"""

import errno
import queue
import socket
import threading
import time
from datetime import timedelta
from typing import Callable, List, Optional, TypeVar

from torch.distributed import DistError, DistNetworkError, DistStoreError, Store, TCPStore

from .endpoint import format_endpoint
from .errors import JobFailedError, StorePortInUseError, StoreUnreachableError

T = TypeVar("T")

# A node probes node 0's port after 2 ms first, then half as long again each
# time, up to every 20 ms: a node that starts just before node 0 listens loses
# milliseconds, not a whole interval, and one that waits long costs little.
_CONNECT_PROBE_FIRST_INTERVAL = 0.002
_CONNECT_PROBE_MAX_INTERVAL = 0.02
# How long a call may still take to be answered once the connection was aborted.
_ANSWER_GRACE = 0.05
# How long after a wait's deadline TCPStore's own time-out reply may take.
_WAIT_REPLY_GRACE = 2.0


def host_store(host: str, port: int, timeout: float) -> TCPStore:
    """Start the store server of a job on node 0.

    Raises:
        StorePortInUseError: another process listens on ``port``.
        StoreUnreachableError: the server could not start for another reason.
    """
    try:
        return TCPStore(
            host,
            port,
            is_master=True,
            wait_for_workers=False,
            multi_tenant=True,
            timeout=timedelta(seconds=timeout),
        )
    except DistNetworkError as error:
        text = str(error).lower()
        if "address already in use" in text or f"errno: {errno.EADDRINUSE}" in text:
            raise StorePortInUseError(
                f"node 0 cannot host the rendezvous store: port {port} is already in use "
                f"(another job, or a leftover process, holds it). Pin a free port with "
                f"--rdzv-endpoint HOST:PORT (master_port in @torchrun), or give the job its "
                f"own --rdzv-id so that it derives another port."
            ) from None
        raise StoreUnreachableError(
            f"node 0 cannot host the rendezvous store on port {port}: {error}"
        ) from None


def wait_until_listening(host: str, port: int, deadline: float) -> bool:
    """Probe ``host:port`` until it accepts a connection; False if ``deadline`` passes.

    TCPStore's own client retries with a growing back-off, which makes a node
    that starts before node 0 join seconds late; a plain socket probe, at most
    every 20 ms, costs nothing and connects as soon as node 0 listens.
    """
    interval = _CONNECT_PROBE_FIRST_INTERVAL
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return True
        except OSError:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, _CONNECT_PROBE_MAX_INTERVAL)


def connect_store(host: str, port: int, timeout: float) -> TCPStore:
    """Open a client connection to a store that is known to listen.

    Raises:
        StoreUnreachableError: the connection failed.
    """
    try:
        return TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))
    except (DistError, RuntimeError) as error:
        raise StoreUnreachableError(
            f"cannot connect to the rendezvous store of node 0 at "
            f"{format_endpoint(host, port)}: {error}"
        ) from None


class _Call:
    """One store call handed to a connection's worker thread, and its outcome."""

    def __init__(self, operation: Callable[[Store], object]):
        self.operation = operation
        self.finished = False
        self.succeeded = False
        self.value: object = None

    def run(self, store: Store) -> None:
        try:
            self.value = self.operation(store)
            self.succeeded = True
        except BaseException as error:  # handed to the caller
            self.value = error


class BoundedConnection:
    """A client connection to node 0's store whose every call ends by a deadline, or on ``abort``.

    TCPStore honours its timeout in ``wait`` and ``get`` only: any call over a
    link that went silent (cable cut, host frozen) blocks forever, and a thread
    blocked in C++ also holds off Python's signal handlers. So the calls run on
    a worker thread of the connection while the caller waits on a condition,
    which the worker's answer, the deadline or ``abort`` ends (signal
    handlers run during the wait). A call that is given up on leaves the worker stuck
    in the connection: the connection is then abandoned and every later call
    fails at once.
    """

    def __init__(self, store: Store, endpoint: str, call_timeout: float):
        self.store = store
        self.endpoint = endpoint
        self.call_timeout = call_timeout
        self._abandoned: Optional[str] = None
        self._aborted: Optional[BaseException] = None
        self._changed = threading.Condition()
        self._hand_over = self._start_worker()

    def _start_worker(self) -> Callable[[_Call], None]:
        """Start the thread that runs the calls; returns what hands a call over to it."""
        calls: "queue.SimpleQueue[_Call]" = queue.SimpleQueue()
        threading.Thread(
            target=self._serve, args=(calls,), name="metaflow-rdzv-store", daemon=True
        ).start()
        return calls.put

    def _serve(self, calls: "queue.SimpleQueue[_Call]") -> None:
        while True:
            self._run(calls.get())

    def _run(self, pending: _Call) -> None:
        pending.run(self.store)
        with self._changed:
            pending.finished = True
            self._changed.notify_all()

    def abort(self, reason: BaseException) -> None:
        """Make every call still waiting for its answer, and every later one, raise ``reason``."""
        with self._changed:
            self._aborted = reason
            self._changed.notify_all()

    def call(self, operation: Callable[[Store], T], deadline: Optional[float] = None) -> T:
        """Return ``operation(store)``; the deadline defaults to ``call_timeout`` from now.

        Raises:
            StoreUnreachableError: no answer by the deadline, the connection was
                abandoned before, or the store failed (node 0 went away).
            The reason given to ``abort``, once it was called.
        """
        if self._abandoned is not None:
            raise StoreUnreachableError(
                f"the connection to the rendezvous store at {self.endpoint} was given up "
                f"({self._abandoned})"
            )
        if deadline is None:
            deadline = time.monotonic() + self.call_timeout
        pending = _Call(operation)
        self._hand_over(pending)
        with self._changed:
            self._changed.wait_for(
                lambda: pending.finished or self._aborted is not None,
                max(0.0, deadline - time.monotonic()),
            )
            if not pending.finished and self._aborted is not None:
                # An answer that comes at once still counts: after a failure
                # elsewhere the agent's exit barrier adds its count, then waits.
                self._changed.wait_for(
                    lambda: pending.finished,
                    max(0.0, min(deadline - time.monotonic(), _ANSWER_GRACE)),
                )
            finished, aborted = pending.finished, self._aborted
        if not finished:
            if aborted is not None:
                self._abandoned = f"stopped waiting: {aborted}"
                raise aborted
            self._abandoned = "no answer in time"
            raise StoreUnreachableError(
                f"the rendezvous store at {self.endpoint} did not answer in time: node 0 "
                f"is down, frozen, or the network to it is cut"
            )
        if pending.succeeded:
            return pending.value  # type: ignore[return-value]
        if isinstance(pending.value, (DistError, RuntimeError)):
            raise StoreUnreachableError(
                f"lost the rendezvous store at {self.endpoint}: "
                f"{str(pending.value).splitlines()[0]}"
            ) from None
        raise pending.value  # type: ignore[misc]

    def wait(self, keys: List[str], deadline: float) -> bool:
        """Wait until every key exists: True, or False once ``deadline`` passed."""
        return self.wait_then(keys, deadline, lambda store: True) is not None

    def wait_then(self, keys: List[str], deadline: float,
                  operation: Callable[[Store], T]) -> Optional[T]:
        """Wait until every key exists, then return ``operation(store)``, in one call.

        Returns None once ``deadline`` passed (so ``operation`` must not
        return None). One call instead of two saves a hand-over to the
        worker thread and back.
        """
        # TCPStore's own timeout ends the wait at the deadline, and our bound
        # comes a little later: the worker thread is then free again, instead
        # of returning from C++ while the interpreter shuts down, which aborts
        # the process.
        timeout = timedelta(seconds=max(0.001, deadline - time.monotonic()))

        def wait_and_operate(store: Store) -> T:
            store.wait(keys, timeout)
            return operation(store)

        try:
            return self.call(wait_and_operate, deadline + _WAIT_REPLY_GRACE)
        except StoreUnreachableError:
            if time.monotonic() >= deadline:
                return None
            raise


class AgentStore(Store):
    """The store torch's agent gets for one round: node 0's store under a round prefix.

    Every call goes through the handler's bounded connection, so none blocks
    the agent for long, and waits (rank assignment, the exit barrier) end as
    soon as the job fails elsewhere. The agent calls ``wait`` only in its exit
    barrier, which it enters once its workers all succeeded: ``wait`` first
    calls ``workers_finished``.
    """

    def __init__(
        self,
        main: BoundedConnection,
        prefix: str,
        join_timeout: float,
        workers_finished: Callable[[], None],
    ):
        super().__init__()
        self._main = main
        self._prefix = prefix
        self._timeout = timedelta(seconds=join_timeout)
        self._workers_finished = workers_finished

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
            self._workers_finished()
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


def wipe_worker_keys(store: Store, namespace: str) -> None:
    """Delete every key outside ``namespace`` (the backend's keys), so a restart round starts clean.

    Those keys are what the previous round's workers left. Call it only while
    every worker is stopped, as while every node is inside ``next_rendezvous``,
    which the agent calls only after stopping them, and only where the store
    lists its keys (``rendezvous.torch_compat.STORE_LISTS_KEYS``).
    """
    for key in store.list_keys():
        if not key.startswith(namespace):
            store.delete_key(key)
