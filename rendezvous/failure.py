"""The failure record: what failed first in a job, as data, from where it is first seen to the card.

A ``Failure`` is made once, where a failure is first seen: by the backend
from torch's ``ChildFailedError`` (``rendezvous.failures``), by node 0's
watcher for a silent node, by the handler for a restart it refuses, by the
task from a worker's error file or a local node that died. It then travels
unchanged: as a JSON line in the store's ``failures`` key, in the outcome
file the agent leaves for its launcher (``rendezvous.outcome``), as the
fields of ``TorchrunFailed`` and on the card. Nobody reads a failure back out
of text: ``summary`` is for people only.

Standard library only: the task imports it without torch.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Dict, Optional, Tuple

from .hangs.records import HangReport

# How many of the last lines of a failing rank's traceback travel with a failure.
TRACEBACK_TAIL_LINES = 20
# And at most this many characters of them: every node reads the records at a failure.
TRACEBACK_TAIL_CHARS = 4000


def traceback_tail(text: str) -> str:
    """The last ``TRACEBACK_TAIL_LINES`` lines of a traceback (or of any text), at most
    ``TRACEBACK_TAIL_CHARS`` characters."""
    return "\n".join(text.rstrip().splitlines()[-TRACEBACK_TAIL_LINES:])[-TRACEBACK_TAIL_CHARS:]


def worker_error(entry: object) -> Tuple[str, str]:
    """The error and its Python stack ("" without) from the ``message`` entry of
    torchelastic's error file: a dict in the layout torch's ``@record`` and our worker
    bootstrap write (``message``, ``extraInfo.py_callstack``), or plain text."""
    if isinstance(entry, dict):
        return str(entry.get("message", "")), str(entry.get("extraInfo", {}).get("py_callstack", ""))
    return str(entry), ""


def last_line(text: str) -> str:
    """The last line of an error's text ("ValueError: boom" of a chained one), "" for none."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


class FailureKind(str, Enum):
    """How something failed. Only ``PEER_LOST`` is secondary: it follows another failure."""

    RAISED = "raised"  # a rank raised an uncaught exception (its error file says which)
    KILLED = "killed"  # a signal ended a rank
    EXITED = "exited"  # a rank, or an agent, exited with a non-zero code and no error
    PEER_LOST = "peer-lost"  # a rank failed because a peer went away: rarely the root cause
    NODE_LOST = "node-lost"  # a node went silent, died or became unreachable
    NODE_NEVER_ARRIVED = "node-never-arrived"  # a node did not join within join_timeout
    RESTART_REFUSED = "restart-refused"  # a restart asked for after another node finished
    STOPPED = "stopped"  # an agent was stopped from outside (a signal)
    RENDEZVOUS = "rendezvous"  # the rendezvous could not work (arguments, topology, store)
    HUNG = "hung"  # ranks waited in a collective for hang_fail_after; see Failure.hang


@dataclass(frozen=True)
class Failure:
    """What failed, where, how and why.

    Attributes:
        kind: how it failed (``FailureKind``).
        message: the failure's own words: a rank's error (``"ValueError: boom"``),
            or what happened to a node (``"stopped sending heartbeats ..."``).
        node_index: the node that failed (the Metaflow node index), when known.
        rank, local_rank: the failing rank's global and local rank, for a rank's failure.
        exit_code: the rank's exit code; None where a signal ended it (see ``signal``).
        signal: the name of the signal that ended the rank (``"SIGKILL"``), else None.
        traceback_tail: the end of the failing rank's traceback, "" without one;
            for a hang, the culprits' stacks.
        time: when it failed (``time.time()``).
        hang: the hang diagnosis (``rendezvous.hangs.records.HangReport``): of a
            ``HUNG`` failure, and of any failure that ended a job reported hung (a
            collective's own timeout), else None. For a hang, ``node_index``,
            ``rank`` and ``local_rank`` name its first culprit, if it has one.
    """

    kind: FailureKind
    message: str
    node_index: Optional[int] = None
    rank: Optional[int] = None
    local_rank: Optional[int] = None
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    traceback_tail: str = ""
    time: float = field(default_factory=time.time)
    hang: Optional[HangReport] = None

    @property
    def summary(self) -> str:
        """One line for people: who failed first and how. Never parsed back."""
        if self.kind == FailureKind.HUNG:
            return f"the job hung: {self.message}"
        if self.rank is not None or self.local_rank is not None:
            how = (f"was killed by {self.signal}" if self.signal
                   else f"exited with code {self.exit_code}")
            detail = (f"global rank {self.rank} (local rank {self.local_rank}) {how}"
                      if self.rank is not None else f"local rank {self.local_rank} {how}")
            if self.message:
                detail += f": {self.message}"
        else:
            detail = self.message
        if self.kind == FailureKind.RENDEZVOUS or self.node_index is None:
            return detail
        who = "the control node (node 0)" if self.node_index == 0 else f"node {self.node_index}"
        verb = "never arrived" if self.kind == FailureKind.NODE_NEVER_ARRIVED else "failed first"
        return f"{who} {verb}: {detail}"

    @property
    def secondary(self) -> bool:
        """Whether it only follows another failure (a peer went away)."""
        return self.kind == FailureKind.PEER_LOST

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["hang"] = None if self.hang is None else self.hang.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Failure":
        """The record ``to_dict`` made; a kind this version does not know counts as ``PEER_LOST``
        (secondary: the root cause only when nothing else failed).

        Raises:
            ValueError: ``data`` is not a failure record.
        """
        try:
            kind = FailureKind(data["kind"])
        except ValueError:
            kind = FailureKind.PEER_LOST
        except (KeyError, TypeError):
            raise ValueError(f"not a failure record: {data!r}") from None

        def number(name: str) -> Optional[int]:
            value = data.get(name)
            return None if value is None else int(value)

        return cls(
            kind=kind,
            message=str(data.get("message") or ""),
            node_index=number("node_index"),
            rank=number("rank"),
            local_rank=number("local_rank"),
            exit_code=number("exit_code"),
            signal=data.get("signal") or None,
            traceback_tail=str(data.get("traceback_tail") or ""),
            time=float(data.get("time") or 0.0),
            hang=_hang(data.get("hang")),
        )

    def to_json(self) -> str:
        """One line of JSON (no newline in it)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, line: str) -> "Failure":
        """Raises ``ValueError`` for a line that is not a record."""
        return cls.from_dict(json.loads(line))


def _hang(data: object) -> Optional[HangReport]:
    """The hang report of a record; None without one, or for one this version cannot read."""
    try:
        return HangReport.from_dict(data) if isinstance(data, dict) else None
    except ValueError:
        return None


__all__ = [
    "Failure", "FailureKind", "TRACEBACK_TAIL_LINES", "last_line", "traceback_tail", "worker_error",
]
