"""Which network interface of this node reaches node 0, for the workers' collectives.

gloo binds the address this machine's hostname resolves to, unless
``GLOO_SOCKET_IFNAME`` names an interface. Stock Debian and Ubuntu map the
hostname to 127.0.1.1, so on such hosts every job that spans machines fails in
gloo's ``connectFullMesh``. NCCL picks an interface by rules of its own
(``NCCL_SOCKET_IFNAME`` overrides them). The backend knows better than both:
the interface this node uses to reach node 0's store is one that reaches the
other nodes, so the workers are told to use it unless the user chose one.

Standard library only, Linux only: elsewhere nothing is found and nothing is set.
"""

import ctypes
import ipaddress
import socket
import sys
from typing import Dict, Iterator, Mapping, Optional, Tuple

GLOO_IFNAME_VAR = "GLOO_SOCKET_IFNAME"
NCCL_IFNAME_VAR = "NCCL_SOCKET_IFNAME"


def local_address_towards(host: str, port: int) -> str:
    """The source address this machine's routing picks for a connection to ``host:port``.

    Connecting a UDP socket sends nothing; it only makes the kernel choose the
    route and the source address, the same ones a TCP connection would use.

    Raises:
        OSError: ``host`` does not resolve, or no route leads to it.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.connect(address)
        return probe.getsockname()[0]


# The C library the interpreter runs with, where getifaddrs lives. Not
# ctypes.util.find_library("c"): that runs ldconfig in a subprocess at every
# call, a few milliseconds of every node's first round.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class _SockAddr(ctypes.Structure):
    # Linux's layout: a 16-bit family first (BSDs put a length byte before it).
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 26)]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("next", ctypes.POINTER(_IfAddrs)),
    ("name", ctypes.c_char_p),
    ("flags", ctypes.c_uint),
    ("addr", ctypes.POINTER(_SockAddr)),
    ("netmask", ctypes.POINTER(_SockAddr)),
    ("broadaddr", ctypes.POINTER(_SockAddr)),
    ("data", ctypes.c_void_p),
]

# Where the address sits in sockaddr_in / sockaddr_in6, counted from the end of
# the family field: after the port (2 bytes), and for IPv6 the flow info (4).
_ADDRESS_SLICES = {socket.AF_INET: slice(2, 6), socket.AF_INET6: slice(6, 22)}


def _interface_addresses() -> Iterator[Tuple[str, str]]:
    """``(interface name, address)`` for every IPv4 and IPv6 address of this machine."""
    if _LIBC is None:
        return
    head = ctypes.POINTER(_IfAddrs)()
    if _LIBC.getifaddrs(ctypes.byref(head)) != 0:
        return
    try:
        entry = head
        while entry:
            item = entry.contents
            if item.addr and item.addr.contents.family in _ADDRESS_SLICES:
                family = item.addr.contents.family
                raw = bytes(item.addr.contents.data)[_ADDRESS_SLICES[family]]
                yield item.name.decode(errors="replace"), socket.inet_ntop(family, raw)
            entry = item.next
    finally:
        _LIBC.freeifaddrs(head)


def interface_with_address(address: str) -> Optional[str]:
    """Name of the interface that holds ``address``, or None (not found, or not Linux)."""
    wanted = ipaddress.ip_address(address.split("%", 1)[0])
    for name, found in _interface_addresses():
        if ipaddress.ip_address(found.split("%", 1)[0]) == wanted:
            return name
    return None


def socket_ifname_defaults(
    host: str, port: int, environ: Mapping[str, str]
) -> Tuple[Dict[str, str], Optional[str]]:
    """The ``*_SOCKET_IFNAME`` variables the workers should get, and the interface found.

    Names the interface that reaches ``host:port`` (node 0's store) for gloo and,
    as an exact match (``=name``), for NCCL. A variable already in ``environ``
    is the user's choice and is left out. Returns ``({}, None)`` when no
    interface can be found; the collectives then pick one as they would anyway.
    """
    try:
        interface = interface_with_address(local_address_towards(host, port))
    except (OSError, ValueError):
        return {}, None
    if interface is None:
        return {}, None
    wanted = {GLOO_IFNAME_VAR: interface, NCCL_IFNAME_VAR: f"={interface}"}
    return {name: value for name, value in wanted.items() if name not in environ}, interface
