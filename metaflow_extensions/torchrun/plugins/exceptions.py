"""Errors of ``@torchrun`` and ``current.torch.run``; each message says what to do next."""

from typing import Optional

from metaflow.exception import MetaflowException


class TorchrunException(MetaflowException):
    """Base class of every error raised by ``@torchrun`` and ``current.torch``."""

    headline = "torchrun error"


class TorchrunArgumentError(TorchrunException, ValueError):
    """An argument of ``current.torch.run`` or an attribute of ``@torchrun`` cannot be used.

    Raised before anything is started.
    """

    headline = "Invalid torchrun argument"


class TorchrunNotEnabled(TorchrunException, AttributeError):
    """``current.torch`` was used in a step that has no ``@torchrun``.

    It is an ``AttributeError`` so that ``hasattr(current, "torch")`` and
    ``"torch" in current`` stay False there.
    """

    headline = "current.torch is not available"


class TorchrunFailed(TorchrunException):
    """The torchrun job failed: a worker, a node, or the rendezvous.

    Attributes:
        summary: one line naming what failed first (node, global rank, exit
            code or signal, last line of its error).
        traceback_tail: the end of the failing rank's traceback (as its node's
            backend recorded it when that was another node), else an empty
            string.
        log_dir: this node's per-rank log directory.
        returncode: exit code of this node's torchrun agent.
        node_index: the node that failed first when known, else None.
    """

    headline = "torchrun failed"

    def __init__(
        self,
        summary: str,
        traceback_tail: str = "",
        log_dir: str = "",
        returncode: Optional[int] = None,
        node_index: Optional[int] = None,
        hint: str = "",
    ):
        self.summary = summary
        self.traceback_tail = traceback_tail
        self.log_dir = log_dir
        self.returncode = returncode
        self.node_index = node_index
        parts = [summary]
        if traceback_tail:
            parts.append(traceback_tail.rstrip())
        if hint:
            parts.append(hint)
        if log_dir:
            parts.append(f"Per-rank logs of this node: {log_dir}")
        super().__init__("\n".join(parts))
