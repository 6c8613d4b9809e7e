"""Node 0's store answers changes when they happen: nothing polls it, and every node still sees them.

Real TCPStores on loopback, watchers and handlers in this process (node 0's
store in a child process where a test takes it away).
"""

import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from torch.distributed import Store

import rendezvous.handler as handler_module
import rendezvous.watcher as watcher_module
from rendezvous.errors import JobFailedError
from rendezvous.failure import Failure, FailureKind
from rendezvous.failures import encode_failure
from rendezvous.handler import MetaflowRendezvousHandler
from rendezvous.keys import JobKeys
from rendezvous.settings import RendezvousSettings
from rendezvous.store import BoundedConnection, connect_store, host_store, wait_until_listening
from rendezvous.topology import Topology
from rendezvous.watcher import Watcher, wake_every_node

LOOPBACK = "127.0.0.1"
NUM_NODES = 3
# Heartbeats so rare that in these tests the watchers send none: whatever a
# watcher learns, it learns because the store answered its wait.
QUIET = RendezvousSettings(join_timeout=30, heartbeat_interval=100, heartbeat_timeout=200)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def job():
    """Node 0's store set up as node 0's handler sets it up, and a watcher per node."""
    port = _free_port()
    server = host_store(LOOPBACK, port, 10)
    keys = JobKeys("scale-test")
    server.multi_set([keys.round, keys.failures], ["0", ""])
    watchers = []
    for node in range(NUM_NODES):
        side = BoundedConnection(connect_store(LOOPBACK, port, 10), f"{LOOPBACK}:{port}", 10)
        watcher = Watcher(keys, QUIET, Topology(node, NUM_NODES, LOOPBACK), side,
                          joined=lambda: True, host=LOOPBACK, port=port)
        watcher.start()
        watchers.append(watcher)
    yield server, keys, watchers
    for watcher in watchers:
        watcher.stop()


def test_a_change_is_seen_when_the_store_wakes_the_nodes_not_before(job):
    server, keys, watchers = job
    # A record written without waking anyone stays unseen: nothing polls.
    server.append(keys.failures, encode_failure(Failure(FailureKind.RAISED, "first", node_index=2)))
    time.sleep(0.5)
    assert all(watcher.failure() is None for watcher in watchers)
    wake_every_node(server, keys, NUM_NODES)
    assert _until(lambda: all(watcher.failure() is not None for watcher in watchers))
    assert all(watcher.failure().node_index == 2 for watcher in watchers)


def test_the_first_failure_wakes_every_node_and_later_ones_wake_none(job):
    server, keys, watchers = job
    watchers[1].publish_failure(Failure(FailureKind.PEER_LOST, "lost a peer", node_index=1))
    assert _until(lambda: all(watcher.failure() is not None for watcher in watchers))
    watchers[2].publish_failure(Failure(FailureKind.RAISED, "raised", node_index=2))
    assert int(server.add(keys.failure_count, 0)) == 2
    # Each node took its wake key off before reading; the second record set none again.
    assert not any(server.check([keys.wake(node)]) for node in range(NUM_NODES))
    # What a node reads when it closes names the node that failed of its own accord.
    for watcher in watchers:
        watcher.reread_failure()
    assert all(watcher.failure().node_index == 2 for watcher in watchers)


def test_stop_ends_both_threads_of_a_waiting_watcher(job):
    _, _, watchers = job
    threads = [thread for watcher in watchers for thread in watcher._threads]
    assert all(thread.is_alive() for thread in threads)
    for watcher in watchers:
        watcher.stop()
    assert not any(thread.is_alive() for thread in threads)


def test_a_restart_asked_by_one_node_reaches_all_and_only_the_first_asker_wakes_them():
    port = _free_port()
    handlers = [
        MetaflowRendezvousHandler(Topology(node, NUM_NODES, LOOPBACK), QUIET, "scale-restart",
                                  LOOPBACK, port)
        for node in range(NUM_NODES)
    ]
    keys = JobKeys("scale-restart")
    try:
        joins = [threading.Thread(target=handler.next_rendezvous) for handler in handlers]
        for thread in joins:
            thread.start()
        for thread in joins:
            thread.join(30)
        assert all(handler.joined_a_round() for handler in handlers)
        assert [handler.num_nodes_waiting() for handler in handlers] == [0, 0, 0]
        asker = threading.Thread(target=handlers[2].next_rendezvous)
        asker.start()
        assert _until(lambda: handlers[0].num_nodes_waiting() == handlers[1].num_nodes_waiting() == 1)
        followers = [threading.Thread(target=handler.next_rendezvous) for handler in handlers[:2]]
        for thread in followers:
            thread.start()
        for thread in followers + [asker]:
            thread.join(30)
        assert [handler.num_nodes_waiting() for handler in handlers] == [0, 0, 0]
        store = handlers[0]._server
        assert int(store.add(keys.asked(1), 0)) == NUM_NODES
        assert store.get(keys.round) == b"1"
    finally:
        # Node 0 waits for the others to close: all close at once.
        closing = [threading.Thread(target=handler.shutdown) for handler in handlers]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(30)


def test_a_store_that_goes_away_fails_the_job_at_once_not_after_heartbeat_timeout():
    port = _free_port()
    server = subprocess.Popen([
        sys.executable, "-c",
        "import sys, time; from rendezvous.store import host_store; "
        f"store = host_store({LOOPBACK!r}, {port}, 10); "
        "store.multi_set(sys.argv[1:], ['0', '']); time.sleep(60)",
        *[JobKeys("scale-gone").round, JobKeys("scale-gone").failures],
    ])
    watcher = None
    try:
        assert wait_until_listening(LOOPBACK, port, time.monotonic() + 30)
        side = BoundedConnection(connect_store(LOOPBACK, port, 10), f"{LOOPBACK}:{port}", 10)
        watcher = Watcher(JobKeys("scale-gone"), QUIET, Topology(1, 2, LOOPBACK), side,
                          joined=lambda: True, host=LOOPBACK, port=port)
        watcher.start()
        time.sleep(0.3)  # the change thread is connected and waiting
        server.kill()
        # heartbeat_timeout is 200 s: only the waiting connection can tell this soon.
        assert _until(lambda: watcher.failure() is not None)
        assert isinstance(watcher.failure(), JobFailedError)
        assert "unreachable" in str(watcher.failure())
    finally:
        server.kill()
        server.wait()
        if watcher is not None:
            watcher.stop()


class _RecordingStore:
    """A client store that records every request made through it: ``(method, arguments)``.

    Timeouts are recorded as ``"timeout"``: they come from deadlines, which differ
    from run to run; everything else (keys, values, amounts) as given.
    """

    def __init__(self, store: Store, log: list):
        self._store = store
        self._log = log

    def __getattr__(self, name: str):
        method = getattr(self._store, name)

        def recorded(*args):
            self._log.append((name, tuple(
                "timeout" if isinstance(arg, timedelta) else
                tuple(arg) if isinstance(arg, list) else arg for arg in args)))
            return method(*args)

        return recorded


def _requests_of_a_job(monkeypatch, connection_class) -> list:
    """Every request of a 2-node job through round 0, a restart asked by node 1, and the close.

    One list per client connection (node 0's own store, which it hosts, is not
    one), sorted: which connection is opened first is up to the threads.
    Node 0's reads of the heartbeat counters are left out: when they happen
    depends on the wall clock (the instants between the beats).
    """
    logs = []

    def recording_connect(host, port, timeout):
        logs.append([])
        return _RecordingStore(connect_store(host, port, timeout), logs[-1])

    monkeypatch.setattr(handler_module, "connect_store", recording_connect)
    monkeypatch.setattr(watcher_module, "connect_store", recording_connect)
    monkeypatch.setattr(handler_module, "BoundedConnection", connection_class)
    port = _free_port()
    run_id = "scale-requests"
    keys = JobKeys(run_id)
    node0, node1 = (MetaflowRendezvousHandler(Topology(node, 2, LOOPBACK), QUIET, run_id,
                                              LOOPBACK, port) for node in range(2))
    try:
        # Node 0 arrives first in round 0, node 1 first in round 1: the last to
        # arrive makes more requests, so the order is fixed.
        first = threading.Thread(target=node0.next_rendezvous)
        first.start()
        assert wait_until_listening(LOOPBACK, port, time.monotonic() + 30)
        observer = connect_store(LOOPBACK, port, 10)
        assert _until(lambda: observer.check([keys.count(0)]))
        node1.next_rendezvous()
        first.join(30)
        restart = threading.Thread(target=node1.next_rendezvous)
        restart.start()
        assert _until(lambda: node0.num_nodes_waiting() == 1 and observer.check([keys.count(1)]))
        node0.next_rendezvous()
        restart.join(30)
    finally:
        node1.shutdown()
        node0.shutdown()
    beat_reads = ("multi_get", (tuple(keys.heartbeat(node) for node in range(1, 2)),))
    return sorted([request for request in log if request != beat_reads] for log in logs)


def test_the_scale_benchmarks_inline_calls_make_the_same_requests_as_a_real_node(monkeypatch):
    """``bench.scale``'s cheap simulated node (``--inline-nodes``) is traffic-equivalent."""
    from bench.scale.nodes import InlineConnection

    threaded = _requests_of_a_job(monkeypatch, BoundedConnection)
    inline = _requests_of_a_job(monkeypatch, InlineConnection)
    assert len(threaded) == 5  # node 1's main, both nodes' side and change connections
    assert inline == threaded
