"""What the parent and its forked nodes share: what one measurement is, and the pipes between them."""

import os
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

BACKENDS = ("metaflow", "c10d", "static")
RESTARTABLE = frozenset({"metaflow", "c10d"})

# One release instant, as the parent writes it and every node reads it.
TIME_RECORD = struct.Struct("d")
# Lines a node writes to the shared report pipe stay below PIPE_BUF, so that
# writes of different nodes never interleave.
MAX_REPORT_BYTES = 4000


@dataclass(frozen=True)
class Options:
    """What a whole benchmark run measures; see ``parse_args`` in ``__main__`` for each field."""

    node_counts: Tuple[int, ...]
    backends: Tuple[str, ...]
    repeats: int
    late_delay: float
    monitor_interval: float
    timeout: float


@dataclass(frozen=True)
class Scenario:
    """One measurement: a backend, a node count, and node 0's start delay."""

    backend: str
    num_nodes: int
    node0_delay: float
    with_restart: bool


@dataclass
class Outcome:
    """The timings of one measurement, in seconds; ``error`` set when it failed."""

    round_s: Optional[float] = None
    restart_s: Optional[float] = None
    node_cpu_s: Optional[float] = None
    error: Optional[str] = None


class Pipes:
    """The pipes between the parent and the nodes of one measurement.

    ``report``: every node writes ``kind index value`` lines to the parent.
    ``go_round``/``go_restart``: the parent writes one release instant per node.
    ``go_shutdown``: the same, once every node finished its rounds: torchrun
    calls ``shutdown()`` only at the end, and ``c10d`` closes the rendezvous
    for everybody there, failing a node still inside ``next_rendezvous()``.
    ``leave``: nodes block reading it until the parent closes it (EOF), which
    lets node 0 keep its store up until every node is done with it.
    """

    def __init__(self) -> None:
        self.report = os.pipe()
        self.go_round = os.pipe()
        self.go_restart = os.pipe()
        self.go_shutdown = os.pipe()
        self.leave = os.pipe()
        self._open = {
            *self.report, *self.go_round, *self.go_restart, *self.go_shutdown, *self.leave
        }

    def keep_only(self, *keep: int) -> None:
        """Close every end of these pipes but ``keep`` (each side holds only its own ends)."""
        for fd in self._open - set(keep):
            os.close(fd)
        self._open &= set(keep)

    def keep_node_ends(self) -> None:
        """In a node: keep the write end of ``report`` and the read ends of the others."""
        self.keep_only(self.report[1], self.go_round[0], self.go_restart[0], self.go_shutdown[0],
                       self.leave[0])

    def keep_parent_ends(self) -> None:
        """In the parent: keep the read end of ``report`` and the write ends of the others."""
        self.keep_only(self.report[0], self.go_round[1], self.go_restart[1], self.go_shutdown[1],
                       self.leave[1])

    def close_all(self) -> None:
        self.keep_only()


class MeasurementFailed(Exception):
    """A node reported an error, died, or the measurement ran out of time."""
