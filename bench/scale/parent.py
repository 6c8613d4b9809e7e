"""The parent side: fork node 0 and the processes of simulated nodes, drive them, time them."""

import gc
import multiprocessing
import os
import resource
import signal
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Dict, List, Optional, Tuple

from rendezvous.settings import RendezvousSettings

from bench.store_ports import free_port

from .nodes import host_process

# Simulated nodes per process: enough processes that the store connections
# and threads of one stay few thousands, few enough to fit two cores.
_NODES_PER_PROCESS = 128
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class MeasurementFailed(Exception):
    """A node reported an error, or events did not come in time."""


@dataclass
class Figures:
    """What one job of N nodes measured; ``None`` where that part was not run."""

    nodes: int
    round_s: Optional[float] = None
    # CPU seconds spent during the first round: node 0's process, and all the others'.
    round_cpu_node0_s: Optional[float] = None
    round_cpu_others_s: Optional[float] = None
    idle_cpu_s_per_s: Optional[float] = None
    restart_s: Optional[float] = None
    failure_to_stopped_s: Optional[float] = None
    silent_detected_s: Optional[float] = None


def raise_file_limit() -> None:
    """Node 0 holds a few connections per node: let every process open as many files as allowed."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Job:
    """One job of ``num_nodes`` nodes: node 0 alone in a process, the rest in groups.

    ``alone`` names nodes that get a process of their own (to be silenced by SIGSTOP);
    ``inline_calls`` makes the nodes other than node 0 call the store on the
    calling thread (``nodes.InlineConnection``).
    """

    def __init__(self, backend: str, num_nodes: int, settings: RendezvousSettings,
                 timeout: float, alone: Tuple[int, ...] = (), inline_calls: bool = False):
        self.num_nodes = num_nodes
        self.timeout = timeout
        port = free_port()
        run_id = f"scale-{uuid.uuid4().hex[:8]}"
        rest = [i for i in range(1, num_nodes) if i not in alone]
        groups = [[0]] + [[i] for i in alone] + [
            rest[start:start + _NODES_PER_PROCESS]
            for start in range(0, len(rest), _NODES_PER_PROCESS)
        ]
        context = multiprocessing.get_context("fork")
        # torch's objects, created by the imports, stay out of the children's
        # collections: a full collection walks every object of the process, so
        # with a hundred nodes' allocations per process it ran often and copied
        # the whole inherited heap (copy-on-write) in each child. A real node
        # makes too few allocations to collect often.
        gc.freeze()
        self._processes: List[multiprocessing.Process] = []
        self._pipes: List[Connection] = []
        self.host_of: Dict[int, int] = {}
        self.events: Dict[str, Dict[int, float]] = {}
        try:
            for number, indices in enumerate(groups):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=host_process,
                    args=(theirs, backend, indices, num_nodes, port, run_id, settings, os.getpid(),
                          inline_calls),
                    daemon=True)
                process.start()
                theirs.close()
                self._processes.append(process)
                self._pipes.append(ours)
                for index in indices:
                    self.host_of[index] = number
            self.collect("ready", len(groups))
        except BaseException:
            self.close()
            raise

    @property
    def node0_pid(self) -> int:
        return self._processes[0].pid

    def cpu_of_processes(self) -> List[float]:
        """CPU seconds each process used so far (node 0's first), read from ``/proc``."""
        seconds = []
        for process in self._processes:
            with open(f"/proc/{process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            seconds.append((int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
        return seconds

    def pid_of(self, node: int) -> int:
        return self._processes[self.host_of[node]].pid

    def command(self, node: int, command: str, argument: object = None) -> None:
        self._pipes[self.host_of[node]].send((command, argument))

    def broadcast(self, command: str) -> None:
        for pipe in self._pipes:
            pipe.send((command, None))

    def collect(self, kind: str, count: int, timeout: Optional[float] = None) -> Dict[int, float]:
        """Wait until ``count`` events of ``kind`` came; they are kept by node."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = self.events.setdefault(kind, {})
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MeasurementFailed(f"{len(got)} of {count} {kind!r} events in time")
            for pipe in wait(self._pipes, remaining):
                try:
                    got_kind, node, value = pipe.recv()
                except EOFError:
                    raise MeasurementFailed("a node process died") from None
                if got_kind == "error":
                    raise MeasurementFailed(f"node {node}: {value}")
                self.events.setdefault(got_kind, {})[node] = value
        return got

    def node0_cpu(self) -> float:
        """CPU seconds node 0's process used so far, all its threads (the store's included)."""
        self.events.pop("cpu", None)
        self.command(0, "cpu")
        return self.collect("cpu", 1)[0]

    def close(self) -> None:
        for process in self._processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        for process in self._processes:
            process.join()
        for pipe in self._pipes:
            pipe.close()


def _idle_cpu(job: Job, settle: float, window: float) -> float:
    time.sleep(settle)
    before = job.node0_cpu()
    start = time.monotonic()
    time.sleep(window)
    after = job.node0_cpu()
    return (after - before) / (time.monotonic() - start)


def _form_round(job: Job) -> float:
    """Node 0 first, then every other node; seconds until the last ``next_rendezvous()`` returned."""
    start = time.monotonic()
    job.broadcast("join")
    rounds = job.collect("round", job.num_nodes)
    return max(rounds.values()) - start


def measure_baseline(backend: str, settings: RendezvousSettings, settle: float, window: float,
                     timeout: float) -> float:
    """Node 0's CPU per second when it is the job's only node."""
    job = Job(backend, 1, settings, timeout)
    try:
        _form_round(job)
        return _idle_cpu(job, settle, window)
    finally:
        job.close()


def measure_job(backend: str, num_nodes: int, settings: RendezvousSettings, parts: List[str],
                settle: float, window: float, timeout: float,
                inline_calls: bool = False) -> Figures:
    """Round, idle CPU, restart and failure in one job; a silent node in a second one.

    The last node is the one that restarts, fails, or falls silent.
    """
    figures = Figures(num_nodes)
    last = num_nodes - 1
    if {"round", "idle", "restart", "failure"} & set(parts):
        job = Job(backend, num_nodes, settings, timeout, inline_calls=inline_calls)
        try:
            before = job.cpu_of_processes()
            figures.round_s = _form_round(job)
            spent = [after - was for after, was in zip(job.cpu_of_processes(), before)]
            figures.round_cpu_node0_s, figures.round_cpu_others_s = spent[0], sum(spent[1:])
            if "idle" in parts:
                figures.idle_cpu_s_per_s = _idle_cpu(job, settle, window)
            if "restart" in parts:
                job.command(last, "restart", last)
                asked = job.collect("restart_asked", 1)[last]
                figures.restart_s = max(job.collect("restart", num_nodes).values()) - asked
            if "failure" in parts:
                time.sleep(settle)
                job.command(last, "fail", last)
                failed = job.collect("failed", 1)[last]
                stopped = job.collect("stopped", num_nodes - 1)
                figures.failure_to_stopped_s = max(stopped.values()) - failed
        finally:
            job.close()
    if "silent" in parts:
        job = Job(backend, num_nodes, settings, timeout, alone=(last,),
                  inline_calls=inline_calls)
        try:
            _form_round(job)
            time.sleep(settle)
            silenced = time.monotonic()
            os.kill(job.pid_of(last), signal.SIGSTOP)
            # Node 0 fails the job, and every node but the silent one stops.
            stopped = job.collect("stopped", num_nodes - 1,
                                  timeout=settings.heartbeat_timeout * 2 + timeout)
            figures.silent_detected_s = stopped[0] - silenced
        finally:
            job.close()
    return figures
