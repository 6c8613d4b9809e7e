"""Where the benchmarks' stores listen: loopback, and ports nothing else can hold.

Store ports come from below Linux's ephemeral range (32768-60999): an outgoing
connection of some node can then never sit on a port a store is about to listen on.
"""

import socket

LOOPBACK = "127.0.0.1"
STORE_PORTS = range(21000, 32768)


def free_port() -> int:
    """The first port of ``STORE_PORTS`` that nothing holds now.

    Raises:
        RuntimeError: every one of them is held.
    """
    for port in STORE_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port left in {STORE_PORTS}")
