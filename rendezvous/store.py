"""Node 0's TCPStore, the other nodes' connections to it, and waits that can be interrupted.

A blocking ``TCPStore.wait`` holds the calling thread inside C++: Python signal
handlers (torchrun's SIGTERM handling) run only when it returns, and waiting in
short slices instead makes TCPStore log a warning per slice. So every long wait
here runs in a helper thread while the caller waits on a ``threading.Event``,
checking for aborts and signals every few tens of milliseconds.
"""

import errno
import socket
import threading
import time
from datetime import timedelta
from typing import Callable, List, Optional

from torch.distributed import DistError, DistNetworkError, Store, TCPStore

from .endpoint import format_endpoint
from .errors import StorePortInUseError, StoreUnreachableError

# Every key of ours lives below this prefix; anything else in the store belongs
# to the workers (their process groups) and is wiped before a restart round.
KEY_NAMESPACE = "metaflow-torchrun/"
# Holds the rdzv id of the job whose node 0 hosts the store.
JOB_KEY = KEY_NAMESPACE + "job"

_CONNECT_PROBE_INTERVAL = 0.02
_ABORT_CHECK_INTERVAL = 0.05


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
    that starts before node 0 join seconds late; a plain socket probe every
    20 ms costs nothing and connects as soon as node 0 listens.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return True
        except OSError:
            time.sleep(min(_CONNECT_PROBE_INTERVAL, max(0.0, deadline - time.monotonic())))


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


def wait_for_keys(
    store: Store,
    keys: List[str],
    deadline: float,
    abort: Callable[[], Optional[BaseException]],
) -> bool:
    """Wait until every key in ``keys`` exists, ``deadline`` passes, or ``abort`` says stop.

    Returns True when the keys exist and False at the deadline. Raises what
    ``abort`` returns, and the store's own error if the wait failed (the store
    went away). After False or an abort the helper thread may still block in
    ``store``: the caller must not use that connection again.
    """
    finished = threading.Event()
    failure: List[BaseException] = []

    def wait_in_thread() -> None:
        try:
            # A little past our deadline, so that our own check fires first.
            remaining = max(0.0, deadline - time.monotonic()) + 1.0
            store.wait(keys, timedelta(seconds=remaining))
        except BaseException as error:  # reported to the caller below
            failure.append(error)
        finally:
            finished.set()

    threading.Thread(target=wait_in_thread, name="metaflow-rdzv-wait", daemon=True).start()
    while not finished.wait(_ABORT_CHECK_INTERVAL):
        reason = abort()
        if reason is not None:
            raise reason
        if time.monotonic() >= deadline:
            return False
    if failure:
        if time.monotonic() >= deadline:
            return False
        raise failure[0]
    return True
