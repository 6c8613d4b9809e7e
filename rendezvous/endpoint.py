"""Where node 0's store listens: the ``--rdzv-endpoint`` or a port derived from the rdzv id."""

import hashlib
from typing import Tuple

from .topology import Topology

# Derived ports stay below Linux's default ephemeral range (32768-60999), so an
# outgoing connection of some other program is unlikely to hold one.
DERIVED_PORT_BASE = 20000
DERIVED_PORT_SPAN = 12000


def _config_error(message: str) -> Exception:
    # Imported here: rendezvous.errors imports torch, which takes seconds, and the
    # task of a @torchrun step with a card computes the endpoint without torch.
    from .errors import ConfigError

    return ConfigError(message)


def derive_port(run_id: str) -> int:
    """Return the store port for a job: the same on every node, spread across jobs.

    ``20000 + int(sha256(run_id)) % 12000``: equal rdzv ids give equal ports;
    different ids collide with probability 1/12000.
    """
    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    return DERIVED_PORT_BASE + int.from_bytes(digest[:8], "big") % DERIVED_PORT_SPAN


def parse_endpoint(endpoint: str, default_host: str, default_port: int) -> Tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]:port``, ``:port`` or a bare IPv6 address.

    Missing parts take the defaults.

    Raises:
        ConfigError: the port is not an integer in 1..65535, or brackets are unbalanced.
    """
    endpoint = endpoint.strip()
    if not endpoint:
        return default_host, default_port
    if endpoint.startswith("["):
        host, bracket, rest = endpoint[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _config_error(
                f"--rdzv-endpoint {endpoint!r}: write IPv6 addresses as [addr] or [addr]:port."
            )
        port_text = rest[1:]
    elif endpoint.count(":") > 1:
        host, port_text = endpoint, ""  # a bare IPv6 address
    else:
        host, _, port_text = endpoint.partition(":")
    host = host or default_host
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise _config_error(
            f"--rdzv-endpoint {endpoint!r}: the port must be an integer from 1 to 65535."
        )
    return host, port


def store_address(endpoint: str, run_id: str, topology: Topology) -> Tuple[str, int]:
    """Where node 0's store listens for job ``run_id``, as every node of the job computes it.

    ``endpoint`` is the ``--rdzv-endpoint`` (may be empty or partial); a
    missing host is node 0's address (``topology.main_ip``), a missing port
    the one the compute layer declared (``@kubernetes(port=...)``), else
    ``derive_port(run_id)``.

    Raises:
        ConfigError: a malformed ``endpoint`` (see ``parse_endpoint``).
    """
    default_port = topology.declared_port or derive_port(run_id)
    return parse_endpoint(endpoint, topology.main_ip, default_port)


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with brackets around IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
