"""Typed errors of the ``metaflow`` rendezvous backend.

Every error subclasses torch's ``RendezvousError`` so that torchrun and the
elastic agent treat them as rendezvous failures, and every message says what to
do next.
"""

from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousTimeoutError,
)


class MetaflowRendezvousError(RendezvousError):
    """Base class of every error raised by the ``metaflow`` backend."""


class TopologyError(MetaflowRendezvousError, ValueError):
    """The node topology (environment or ``--nnodes``) is missing or inconsistent."""


class ConfigError(MetaflowRendezvousError, ValueError):
    """An ``--rdzv-conf`` value or the ``--rdzv-endpoint`` cannot be used."""


class StorePortInUseError(MetaflowRendezvousError):
    """Node 0 could not host the store because its port is taken."""


class StoreUnreachableError(MetaflowRendezvousError, RendezvousConnectionError):
    """A node could not reach, or lost, the store hosted by node 0."""


class ForeignJobError(MetaflowRendezvousError):
    """The store at the endpoint belongs to another job (a different rdzv id)."""


class JoinTimeoutError(MetaflowRendezvousError, RendezvousTimeoutError):
    """Not every node joined a round within ``join_timeout``.

    ``missing`` holds the node indexes that did not arrive.
    """

    def __init__(self, message: str, missing: "list[int]"):
        super().__init__(message)
        self.missing = missing


class JobFailedError(MetaflowRendezvousError, RendezvousClosedError):
    """Another node of the job failed, so this node stops too.

    ``node_index`` is the node that failed first (``None`` when unknown).
    """

    def __init__(self, message: str, node_index: "int | None" = None):
        super().__init__(message)
        self.node_index = node_index
