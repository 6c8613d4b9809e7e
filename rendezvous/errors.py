"""Typed errors of the ``metaflow`` rendezvous backend.

Every error subclasses torch's ``RendezvousError`` so that torchrun and the
elastic agent treat them as rendezvous failures, and every message says what to
do next.
"""

from typing import List, Optional

from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousTimeoutError,
)

from .failure import Failure, FailureKind


class MetaflowRendezvousError(RendezvousError):
    """Base class of every error raised by the ``metaflow`` backend."""

    def failure(self, node_index: Optional[int]) -> Failure:
        """This error as the failure record of node ``node_index``, whose agent it ended."""
        return Failure(FailureKind.RENDEZVOUS, f"{type(self).__name__}: {self}", node_index)


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

    def __init__(self, message: str, missing: List[int]):
        super().__init__(message)
        self.missing = missing

    def failure(self, node_index: Optional[int]) -> Failure:
        first_missing = self.missing[0] if self.missing else None
        return Failure(FailureKind.NODE_NEVER_ARRIVED, f"{type(self).__name__}: {self}",
                       first_missing)


class RestartAfterFinishError(MetaflowRendezvousError, RendezvousClosedError):
    """A node asked for a restart round after another node's workers had all finished.

    A finished node's agent never joins another round, so the round could never
    form; the job fails instead of waiting ``join_timeout`` for it.
    """

    def failure(self, node_index: Optional[int]) -> Failure:
        return Failure(FailureKind.RESTART_REFUSED, f"{type(self).__name__}: {self}", node_index)


def restart_after_finish_reason(round_: int, finished: "list[int]") -> str:
    """Why a restart into ``round_`` cannot happen, and what to do: ``finished`` nodes are done."""
    nodes = ", ".join(map(str, finished))
    return (
        f"its workers failed and it asked for a restart (round {round_}), but the workers of "
        f"node {nodes} had all finished by then, so no restart round can form. A restart "
        f"needs the workers of every node: make every rank wait for the others before it "
        f"returns (for example dist.barrier() at the end), or run without max_restarts"
    )


class JobFailedError(MetaflowRendezvousError, RendezvousClosedError):
    """Another node of the job failed, so this node stops too.

    ``record`` is what failed first, as the node that saw it recorded it
    (``node_index`` is its node); the message is its summary.
    """

    def __init__(self, record: Failure):
        super().__init__(record.summary)
        self.record = record

    @property
    def node_index(self) -> Optional[int]:
        return self.record.node_index

    def failure(self, node_index: Optional[int]) -> Failure:
        return self.record
