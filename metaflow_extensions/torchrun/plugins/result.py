"""``TorchrunResult``: what ``current.torch.run`` returns when every rank of every node succeeded."""

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass(frozen=True)
class TorchrunResult:
    """What ``current.torch.run`` returns when every rank of every node succeeded.

    Attributes:
        exit_code: exit code of this node's torchrun agent (0).
        wall_time: seconds from starting the agent to its exit, on this node.
        restarts: how many times the job restarted its workers in a new
            rendezvous round, the same on every node (``--max-restarts`` bounds
            it for the whole job).
        log_dir: directory with this node's per-rank logs:
            ``<rdzv id>_*/attempt_<n>/<local rank>/{stdout,stderr}.log``.
        return_values: for a function entrypoint, ``{global rank: returned
            value}`` of the ranks that ran on this node, from the attempt that
            succeeded; empty for a script or module.
    """

    exit_code: int
    wall_time: float
    restarts: int
    log_dir: str
    return_values: Dict[int, Any] = field(default_factory=dict)

    @property
    def value(self) -> Any:
        """What global rank 0 returned, on the node that ran it (node 0); None elsewhere."""
        return self.return_values.get(0)
