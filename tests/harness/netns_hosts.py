"""Test hosts on this machine: network namespaces joined by veth pairs to a bridge.

Each host is a namespace with loopback and one interface on a shared bridge,
which lives in a namespace of its own so the machine's own network is never
touched. Addresses come from 198.18.0.0/15, the range set aside for network
testing (RFC 2544), and exist only inside these namespaces. Every namespace
gets a resolv.conf naming a loopback address where nothing listens: TCPStore
makes reverse DNS lookups, which must fail at once rather than wait on a real
resolver. Every namespace also gets the hosts file of a stock Debian or Ubuntu
machine, which maps the hostname (the machine's own: namespaces share it) to
127.0.1.1, so that nothing works only because this machine's hostname happens
to resolve elsewhere.
"""

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import List, Optional

SUBNET_PREFIX = "198.18.0."
# The second network of hosts made with a data network (eth1), as clusters keep their
# training traffic apart from the control traffic.
DATA_SUBNET_PREFIX = "198.19.0."


def unavailable_reason() -> Optional[str]:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"mftr-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TestHosts:
    """``count`` hosts named ``<tag>h<i>`` with addresses 198.18.0.<i+1>; a context manager.

    With ``data_network``, each host also has ``eth1`` on a second switch, with
    address 198.19.0.<i+1> (``data_addresses``).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, count: int, data_network: bool = False):
        self.tag = f"mf{uuid.uuid4().hex[:5]}"
        self.count = count
        self.switch = f"{self.tag}sw"
        self.names = [f"{self.tag}h{i}" for i in range(count)]
        self.addresses = [f"{SUBNET_PREFIX}{i + 1}" for i in range(count)]
        self.data_addresses = (
            [f"{DATA_SUBNET_PREFIX}{i + 1}" for i in range(count)] if data_network else []
        )

    def __enter__(self) -> "TestHosts":
        try:
            self._create()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _create(self) -> None:
        for namespace in [self.switch, *self.names]:
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            files = Path("/etc/netns") / namespace
            files.mkdir(parents=True, exist_ok=True)
            (files / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            (files / "hosts").write_text(debian_hosts_file(socket.gethostname()))
        networks = [("br0", "p", "eth0", self.addresses)]
        if self.data_addresses:
            networks.append(("br1", "d", "eth1", self.data_addresses))
        for bridge, port_prefix, interface, addresses in networks:
            _ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            _ip("-n", self.switch, "link", "set", bridge, "up")
            for index, (namespace, address) in enumerate(zip(self.names, addresses)):
                port = f"{port_prefix}{index}"
                _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
                    interface, "netns", namespace)
                _ip("-n", self.switch, "link", "set", port, "master", bridge)
                _ip("-n", self.switch, "link", "set", port, "up")
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", interface)
                _ip("-n", namespace, "link", "set", interface, "up")

    def _remove(self) -> None:
        for namespace in [self.switch, *self.names]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)

    def command_prefix(self, index: int) -> List[str]:
        """Prefix that runs a command on host ``index``."""
        return ["ip", "netns", "exec", self.names[index]]

    def cut_link(self, index: int) -> None:
        """Take host ``index``'s interface down: its packets vanish, no reset is sent."""
        _ip("-n", self.names[index], "link", "set", "eth0", "down")

    def partition(self, index: int) -> None:
        """Cut host ``index`` off at the switch: its own link stays up, frames to and from it are dropped.

        Unlike ``cut_link``, the host's programs get no error when they send;
        they just never hear back, as across a failed switch.
        """
        _ip("-n", self.switch, "link", "set", f"p{index}", "nomaster")

    def partition_data(self, index: int) -> None:
        """Like ``partition``, on the data network only: the host still reaches the others
        over the first one."""
        _ip("-n", self.switch, "link", "set", f"d{index}", "nomaster")


def debian_hosts_file(hostname: str) -> str:
    """``/etc/hosts`` as stock Debian and Ubuntu write it: the hostname maps to 127.0.1.1."""
    return f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
