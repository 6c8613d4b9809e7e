"""Errors of ``@torchrun`` and ``current.torch.run``; each message says what to do next."""

from typing import Optional

from metaflow.exception import MetaflowException

from rendezvous.failure import Failure, FailureKind


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
    """The torchrun job failed: a rank, a node, or the rendezvous.

    Raised on every node, whichever node failed first, with the same failure
    record (``failure``), whose fields it also carries as attributes:

    Attributes:
        failure: the record (``rendezvous.failure.Failure``).
        kind: how it failed, a ``FailureKind`` (a ``str``): ``"raised"``,
            ``"killed"``, ``"exited"``, ``"peer-lost"``, ``"node-lost"``,
            ``"node-never-arrived"``, ``"restart-refused"``, ``"stopped"``,
            ``"rendezvous"``, ``"hung"`` (``hang_fail_after`` ended a hang).
        node_index: the node that failed first, when known, else None.
        rank, local_rank: the global and local rank that failed first, for a
            rank's failure, else None.
        exit_code: that rank's exit code; None where a signal ended it.
        signal: the name of that signal (``"SIGKILL"``), else None.
        reason: the failure's own words (a rank's last error line).
        traceback_tail: the end of the failing rank's traceback, else ""; for a
            hang, the culprits' stacks.
        hang: the hang diagnosis (``rendezvous.hangs.records.HangReport``) when
            the job was reported hung as it ended, else None: its ``culprits``
            (node, rank, local rank, ``where``: file and line) and ``waits``
            (the collectives the others waited in).
        time: when it failed (seconds since the epoch).
        summary: one line naming what failed first, for people.
        log_dir: this node's per-rank log directory.
        returncode: exit code of this node's torchrun agent.
    """

    headline = "torchrun failed"

    def __init__(
        self,
        failure: Failure,
        log_dir: str = "",
        returncode: Optional[int] = None,
        hint: str = "",
    ):
        self.failure = failure
        self.kind = failure.kind
        self.node_index = failure.node_index
        self.rank = failure.rank
        self.local_rank = failure.local_rank
        self.exit_code = failure.exit_code
        self.signal = failure.signal
        self.reason = failure.message
        self.traceback_tail = failure.traceback_tail
        self.hang = failure.hang
        self.time = failure.time
        self.summary = failure.summary
        self.log_dir = log_dir
        self.returncode = returncode
        self._hint = hint
        parts = [self.summary]
        if failure.traceback_tail:
            parts.append(failure.traceback_tail.rstrip())
        if failure.hang is not None and failure.kind != FailureKind.HUNG:
            parts.append(f"It had been reported hung: {failure.hang.summary}")
        if hint:
            parts.append(hint)
        if log_dir:
            parts.append(f"Per-rank logs of this node: {log_dir}")
        super().__init__("\n".join(parts))

    def __reduce__(self):
        # @catch pickles the exception into an artifact: rebuild it from its record.
        return (type(self), (self.failure, self.log_dir, self.returncode, self._hint))
