"""The backend's fallbacks for older torch releases, forced on the installed one.

Real TCPStores on loopback and two handlers in this process. Every check on
each release itself: ``make compat`` (docs/compatibility.md).
"""

import socket
import threading
import time
from datetime import timedelta

from torch.distributed import TCPStore

import rendezvous.rounds as rounds_module
from rendezvous.errors import JobFailedError
from rendezvous.handler import MetaflowRendezvousHandler
from rendezvous.settings import RendezvousSettings
from rendezvous.topology import Topology

LOOPBACK = "127.0.0.1"
SETTINGS = RendezvousSettings(join_timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _round_on_both(handlers):
    """Both nodes join their next round; returns each node's ``RendezvousInfo``."""
    infos = {}
    first = threading.Thread(target=lambda: infos.__setitem__(0, handlers[0].next_rendezvous()))
    first.start()
    infos[1] = handlers[1].next_rendezvous()
    first.join(30)
    return infos


def test_restart_round_without_list_keys_gives_the_workers_a_fresh_store(monkeypatch):
    # torch before 2.10: the store cannot list the keys round 0's workers left.
    monkeypatch.setattr(rounds_module, "STORE_LISTS_KEYS", False)
    port = _free_port()
    handlers = [MetaflowRendezvousHandler(Topology(node, 2, LOOPBACK), SETTINGS, "compat-restart",
                                          LOOPBACK, port) for node in range(2)]
    try:
        first = _round_on_both(handlers)
        assert {info.bootstrap_store_info.master_port for info in first.values()} == {port}
        round_zero_worker = TCPStore(LOOPBACK, port, is_master=False, timeout=timedelta(seconds=10))
        round_zero_worker.set("default_pg/0//cpu//0/1", "an address of round 0")
        restart = _round_on_both(handlers)
        ports = {info.bootstrap_store_info.master_port for info in restart.values()}
        assert len(ports) == 1 and port not in ports, ports
        round_one_worker = TCPStore(LOOPBACK, ports.pop(), is_master=False,
                                    timeout=timedelta(seconds=10))
        assert not round_one_worker.check(["default_pg/0//cpu//0/1"])
    finally:
        for handler in reversed(handlers):
            handler.shutdown()


def test_shutdown_does_not_raise_again_the_failure_in_flight_and_keeps_the_root_cause():
    # torch 2.15's launcher logs with a traceback, then drops, what shutdown raises.
    port = _free_port()
    handlers = [MetaflowRendezvousHandler(Topology(node, 2, LOOPBACK), SETTINGS, "compat-failure",
                                          LOOPBACK, port) for node in range(2)]
    _round_on_both(handlers)
    try:
        raise ValueError("node 1's agent failed")
    except ValueError:
        assert handlers[1].shutdown() is True  # the root cause is node 1's own
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            handlers[0].num_nodes_waiting()
        except JobFailedError:
            assert handlers[0].shutdown() is True
            break
        time.sleep(0.01)
    else:
        raise AssertionError("node 0 never learned of node 1's failure")
    assert handlers[0].root_cause_elsewhere().record.node_index == 1
