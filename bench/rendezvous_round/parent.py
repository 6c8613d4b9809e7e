"""The parent side: fork the nodes of each measurement, release them together, time them, clean up."""

import os
import resource
import select
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from bench.store_ports import free_port

from .node import node_process
from .protocol import (RESTARTABLE, TIME_RECORD, MeasurementFailed, Options, Outcome,
                       Pipes, Scenario)

# Time between the parent's "go" and the release instant, so that every node is
# asleep waiting for the instant, not still being scheduled, when it comes.
_RELEASE_MARGIN_S = 0.05
_RELEASE_MARGIN_PER_NODE_S = 0.002
class _Reports:
    """Reads ``kind index value`` lines from the nodes until a deadline.

    Nodes move on at their own pace (one may report ``done`` while another has
    not yet reported ``restart``), so lines are filed by kind as they come.
    """

    def __init__(self, fd: int, deadline: float):
        self._fd = fd
        self._deadline = deadline
        self._buffer = b""
        self._by_kind: Dict[str, Dict[int, float]] = {}

    def collect(self, kind: str, count: int) -> Dict[int, float]:
        """Wait for ``count`` reports of ``kind``; raise on an error report, EOF or timeout."""
        while len(self._by_kind.get(kind, {})) < count:
            progress = f"{len(self._by_kind.get(kind, {}))} of {count} {kind!r}"
            got_kind, index_text, value = self._next_line(progress).split(" ", 2)
            if got_kind == "error":
                raise MeasurementFailed(f"node {index_text}: {value}")
            self._by_kind.setdefault(got_kind, {})[int(index_text)] = float(value)
        return self._by_kind[kind]

    def _next_line(self, progress: str) -> str:
        while b"\n" not in self._buffer:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise MeasurementFailed(f"timed out with {progress} reports in")
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise MeasurementFailed(f"every node exited, with {progress} reports in")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")


def _release(fd: int, num_nodes: int) -> float:
    """Send every node the same release instant, far enough ahead for all to be asleep."""
    instant = time.monotonic() + _RELEASE_MARGIN_S + _RELEASE_MARGIN_PER_NODE_S * num_nodes
    # One write of at most PIPE_BUF bytes is atomic: every node reads one whole record.
    os.write(fd, TIME_RECORD.pack(instant) * num_nodes)
    return instant


def _reap(pids: List[int], deadline: float) -> None:
    """Wait for the nodes to exit until ``deadline``, then kill and reap the rest."""
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                alive.discard(pid)
        if alive:
            time.sleep(0.01)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in alive:
        os.waitpid(pid, 0)


def measure(scenario: Scenario, options: Options) -> Outcome:
    """Fork the nodes of one scenario, time its round (and restart), and clean up."""
    n = scenario.num_nodes
    port = free_port()
    run_id = f"bench-{uuid.uuid4().hex[:12]}"
    pipes = Pipes()
    pids: List[int] = []
    parent_pid = os.getpid()
    deadline = time.monotonic() + options.timeout
    outcome = Outcome()
    finished_cleanly = False
    try:
        for index in range(n):
            pid = os.fork()
            if pid == 0:
                node_process(scenario, index, port, run_id, options, pipes, parent_pid)
            pids.append(pid)
        pipes.keep_parent_ends()
        reports = _Reports(pipes.report[0], deadline)
        reports.collect("ready", n)

        release = _release(pipes.go_round[1], n)
        ends = reports.collect("round", n)
        # Node 0 could not have finished before it was released.
        outcome.round_s = max(ends.values()) - release - scenario.node0_delay
        outcome.node_cpu_s = statistics.median(reports.collect("cpu", n).values())
        if scenario.with_restart:
            restart_release = _release(pipes.go_restart[1], n)
            restart_ends = reports.collect("restart", n)
            outcome.restart_s = max(restart_ends.values()) - restart_release
        _release(pipes.go_shutdown[1], n)
        reports.collect("done", n)
        finished_cleanly = True
    except MeasurementFailed as failure:
        outcome.error = str(failure)
    finally:
        pipes.close_all()  # closing ``leave`` is what lets every node exit
        # After a failure (or Ctrl-C) nothing of the nodes is worth waiting for.
        _reap(pids, min(deadline, time.monotonic() + 5.0) if finished_cleanly else 0.0)
    return outcome


class ForeignLoad:
    """How many CPUs other programs kept busy while the benchmark ran (Linux /proc/stat).

    The nodes share the machine's CPUs with whatever else runs; this shows
    whether that was something to keep in mind when reading the numbers.
    """

    def __init__(self) -> None:
        self._start = (time.monotonic(), self._machine_busy_s(), self._own_cpu_s())

    def elapsed(self) -> float:
        return time.monotonic() - self._start[0]

    def cpus(self) -> float:
        """Average number of CPUs kept busy by other programs since this object was made."""
        _, busy_0, own_0 = self._start
        wall = self.elapsed()
        foreign = (self._machine_busy_s() - busy_0) - (self._own_cpu_s() - own_0)
        return max(0.0, foreign) / wall if wall > 0 else 0.0

    @staticmethod
    def _machine_busy_s() -> float:
        with open("/proc/stat") as stat:
            # user nice system idle iowait irq softirq: steal is time the
            # hypervisor took, no program's here.
            ticks = [int(value) for value in stat.readline().split()[1:8]]
        idle = ticks[3] + ticks[4]
        return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_cpu_s() -> float:
        # Children count once reaped, which every measurement does before it returns.
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Samples:
    """Every successful measurement of one backend at one node count, in seconds."""

    round_s: List[float] = field(default_factory=list)
    late_round_s: List[float] = field(default_factory=list)
    restart_s: List[float] = field(default_factory=list)
    node_cpu_s: List[float] = field(default_factory=list)
    foreign_cpus: List[float] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)


def run_benchmark(options: Options) -> Dict[Tuple[str, int], Samples]:
    """Run every scenario ``options.repeats`` times, interleaving backends; return the samples."""
    samples = {(b, n): Samples() for n in options.node_counts for b in options.backends}
    for repeat in range(options.repeats):
        for n in options.node_counts:
            for backend in options.backends:
                for node0_delay in (0.0, options.late_delay):
                    scenario = Scenario(
                        backend, n, node0_delay,
                        with_restart=node0_delay == 0.0 and backend in RESTARTABLE,
                    )
                    label = f"[{repeat + 1}/{options.repeats}] {backend:8} {n:4} nodes"
                    label += " late node 0" if node0_delay else ""
                    _measure_into(scenario, options, samples[(backend, n)], label)
    return samples


def _measure_into(scenario: Scenario, options: Options, bucket: Samples, label: str) -> None:
    """Measure ``scenario`` once, file the outcome in ``bucket``, print one progress line."""
    foreign_load = ForeignLoad()
    outcome = measure(scenario, options)
    bucket.foreign_cpus.append(foreign_load.cpus())
    context = (f"({foreign_load.elapsed():.1f} s; other programs kept "
               f"{bucket.foreign_cpus[-1]:.2f} CPUs busy)")
    if outcome.error is not None:
        bucket.failures.append(outcome.error)
        print(f"  {label}: FAILED {outcome.error} {context}", file=sys.stderr, flush=True)
        return
    (bucket.late_round_s if scenario.node0_delay else bucket.round_s).append(outcome.round_s)
    bucket.node_cpu_s.append(outcome.node_cpu_s)
    text = f"round {outcome.round_s * 1000:.0f} ms"
    if outcome.restart_s is not None:
        bucket.restart_s.append(outcome.restart_s)
        text += f", restart {outcome.restart_s * 1000:.0f} ms"
    print(f"  {label}: {text} {context}", file=sys.stderr, flush=True)
