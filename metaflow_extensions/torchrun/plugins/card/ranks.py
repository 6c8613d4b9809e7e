"""The record of one global rank on the card: its state, its attempts, its latest lines.

``JobState`` (``card.state``) keeps one ``RankState`` per rank and moves it
through its states; a node's ranks travel to node 0's card as their payloads.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional

from rendezvous.failure import Failure

STARTING = "starting"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
# Ended by its agent because another rank failed; also the end of an attempt
# that a restart replaced is marked RESTARTED in the rank's segments.
STOPPED = "stopped"
RESTARTED = "restarted"

# How many of a rank's latest output lines the card shows and the store carries.
LAST_LINES = 5


@dataclass
class Segment:
    """One attempt of a rank: from its start to its end (None while it runs) and how it ended."""

    attempt: int
    start: float
    end: Optional[float] = None
    outcome: str = RUNNING


@dataclass
class RankState:
    """One global rank: where it runs, its state, and its latest lines."""

    rank: int
    local_rank: int
    node: int
    state: str = STARTING
    exit: str = ""  # "0", "1", "SIGKILL"; "" while unknown
    error: str = ""  # a failed rank's error: the end of its traceback, else a summary
    lines: Deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))
    segments: List[Segment] = field(default_factory=list)

    @property
    def started(self) -> Optional[float]:
        return self.segments[0].start if self.segments else None

    @property
    def ended(self) -> Optional[float]:
        return self.segments[-1].end if self.segments else None

    @property
    def restarts(self) -> int:
        return max(0, len(self.segments) - 1)

    def wall_time(self, now: float) -> Optional[float]:
        if self.started is None:
            return None
        return (self.ended or now) - self.started

    def start_attempt(self, attempt: int, at: float) -> None:
        if self.segments and self.segments[-1].end is None:
            self.segments[-1].end = at
            self.segments[-1].outcome = RESTARTED
        self.segments.append(Segment(attempt, at))
        self.state = RUNNING
        self.exit = ""

    def fail_attempt(self, attempt: int, at: float, error: str) -> None:
        """Its segment of ``attempt`` failed (exit code 1: the bootstrap's after an error)."""
        self.error = error
        segment = next((s for s in self.segments if s.attempt == attempt), None)
        if segment is None:
            return
        if segment is self.segments[-1] and segment.end is None:
            self.end(FAILED, at, "1")
        else:  # already replaced by a restart's next attempt
            segment.outcome = FAILED

    def end(self, state: str, at: float, exit_text: str = "") -> None:
        self.state = state
        self.exit = exit_text or self.exit
        if self.segments and self.segments[-1].end is None:
            self.segments[-1].end = at
            self.segments[-1].outcome = state

    def to_payload(self) -> Dict[str, Any]:
        return {
            "rank": self.rank, "local_rank": self.local_rank, "node": self.node,
            "state": self.state, "exit": self.exit, "error": self.error,
            "lines": list(self.lines),
            "segments": [[s.attempt, s.start, s.end, s.outcome] for s in self.segments],
        }

    @classmethod
    def from_payload(cls, data: Dict[str, Any]) -> "RankState":
        return cls(
            rank=int(data["rank"]), local_rank=int(data["local_rank"]), node=int(data["node"]),
            state=str(data["state"]), exit=str(data["exit"]), error=str(data["error"]),
            lines=deque((str(line) for line in data["lines"]), maxlen=LAST_LINES),
            segments=[Segment(int(a), float(s), None if e is None else float(e), str(o))
                      for a, s, e, o in data["segments"]],
        )


def exit_text(failure: Failure) -> str:
    """A failed rank's exit as the card shows it: its code, or the signal's name."""
    if failure.signal:
        return failure.signal
    return "" if failure.exit_code is None else str(failure.exit_code)


def is_failing_rank(state: RankState, failure: Failure) -> bool:
    """Whether ``failure`` names this rank: by global rank, else by node and local rank."""
    if failure.rank is not None:
        return state.rank == failure.rank
    return (failure.local_rank is not None and state.node == failure.node_index
            and state.local_rank == failure.local_rank)
