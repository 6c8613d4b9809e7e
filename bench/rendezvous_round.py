"""Time rendezvous rounds of N nodes: our ``metaflow`` backend, torch's ``c10d`` and ``static``.

Run it inside a loopback-only network namespace (see ``run_in_netns.sh``), or
TCPStore's reverse DNS lookups can add 5 s stalls that have nothing to do with
the backends::

    sudo bench/run_in_netns.sh .venv/bin/python bench/rendezvous_round.py --nodes 2,8,32 --repeats 5

What one measurement does:

- The parent imports torch and registers the backends, then forks one process
  per node, so no node pays for importing torch inside the measurement.
- Every node sleeps until one shared release instant, then builds its handler
  through torch's registry (``get_rendezvous_handler``) and calls
  ``next_rendezvous()``, exactly what torchrun's agent does at start. Handler
  creation is inside the timing because ``c10d`` connects to its store there.
  A round lasts from the release instant until the LAST node's
  ``next_rendezvous()`` returned.
- "late node 0": node 0, which hosts the store in every backend, is released
  ``--late-delay`` seconds after the others; the table shows how long the round
  took beyond that delay, that is how long the early nodes needed to notice it.
- "restart": after round 0, the last node calls ``next_rendezvous()`` again,
  as an agent does when its workers failed. The others poll
  ``num_nodes_waiting()`` every ``--monitor-interval`` seconds (the agent's
  ``monitor_interval``), each from a random phase as independent agents do,
  and follow once it is positive. The restart lasts until
  every node returned from the new round. ``static`` cannot restart: n/a.
- Afterwards every node calls ``handler.shutdown()``, and no node exits before
  every node's ``shutdown()`` returned, so none loses the store while it
  still needs it.
- "CPU ms per node": CPU time (all threads) a node used from its release until
  its first ``next_rendezvous()`` returned, median over the nodes. With more
  nodes than CPUs, N times that divided by the CPU count bounds the round from
  below: on a small machine this, not the network, is what a round costs.

Every measurement gets a fresh port and rdzv id, its processes are bounded by
``--timeout`` (an alarm in each node, a deadline in the parent) and killed on
any error; a failed measurement is counted and left out of the medians.
Repetitions interleave the backends, so load from other programs on the
machine spreads over all of them alike.
"""

import argparse
import ctypes
import gc
import importlib
import os
import random
import resource
import select
import signal
import socket
import statistics
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# Benchmark this checkout's backend even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Read when torch loads: keeps TCPStore's warning per connection (it cannot
# look up the peer's name, which is the point of the namespace) off the output.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

# Imported before any fork, so that no node pays for it inside a measurement.
import torch.distributed  # noqa: E402,F401
from torch.distributed.elastic.rendezvous import RendezvousParameters  # noqa: E402
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler  # noqa: E402

import rendezvous  # noqa: E402

BACKENDS = ("metaflow", "c10d", "static")
RESTARTABLE = frozenset({"metaflow", "c10d"})
LOOPBACK = "127.0.0.1"

# Time between the parent's "go" and the release instant, so that every node is
# asleep waiting for the instant, not still being scheduled, when it comes.
_RELEASE_MARGIN_S = 0.05
_RELEASE_MARGIN_PER_NODE_S = 0.002
_TIME_RECORD = struct.Struct("d")
# Lines a node writes to the shared report pipe stay below PIPE_BUF, so that
# writes of different nodes never interleave.
_MAX_REPORT_BYTES = 4000
_PR_SET_PDEATHSIG = 1
# Store ports come from below Linux's ephemeral range (32768-60999): an outgoing
# connection of some node can then never sit on a port a store is about to
# listen on. One run of the benchmark uses a few hundred.
_PORTS = range(21000, 32768)


@dataclass(frozen=True)
class Options:
    """What a whole benchmark run measures; see ``parse_args`` for each field."""

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


class _Pipes:
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

    def close_all(self) -> None:
        self.keep_only()


class MeasurementFailed(Exception):
    """A node reported an error, died, or the measurement ran out of time."""


# ---------------------------------------------------------------- node side


def _rendezvous_parameters(
    scenario: Scenario, index: int, port: int, run_id: str, timeout: float
) -> RendezvousParameters:
    """The parameters torchrun would build for this node, plus what each backend needs."""
    endpoint = f"{LOOPBACK}:{port}"
    config: Dict[str, object] = {}
    bound = str(int(timeout))
    if scenario.backend == "metaflow":
        os.environ.update(
            MF_PARALLEL_NODE_INDEX=str(index),
            MF_PARALLEL_NUM_NODES=str(scenario.num_nodes),
            MF_PARALLEL_MAIN_IP=LOOPBACK,
        )
        config["join_timeout"] = bound
    elif scenario.backend == "c10d":
        # Without is_host, c10d guesses the host by comparing the endpoint with
        # this machine's names, which every node on one machine matches.
        config.update(is_host=str(index == 0).lower(), join_timeout=bound)
    else:  # static
        # An int, as torchrun passes --node-rank: static compares it with 0 as is.
        config.update(rank=index, timeout=bound)
    return RendezvousParameters(
        backend=scenario.backend,
        endpoint=endpoint,
        run_id=run_id,
        min_nodes=scenario.num_nodes,
        max_nodes=scenario.num_nodes,
        # c10d would otherwise name nodes (and bind its second store) by socket.getfqdn().
        local_addr=LOOPBACK,
        **config,
    )


def _report(fd: int, kind: str, index: int, value: object) -> None:
    line = f"{kind} {index} {value}".replace("\n", " | ")
    os.write(fd, line.encode("utf-8", "replace")[: _MAX_REPORT_BYTES - 1] + b"\n")


def _await_release(fd: int, extra_delay: float = 0.0) -> None:
    """Block until the parent sends the release instant, then sleep until then + ``extra_delay``."""
    record = os.read(fd, _TIME_RECORD.size)
    if len(record) != _TIME_RECORD.size:
        raise MeasurementFailed("the parent went away before the release")
    (release,) = _TIME_RECORD.unpack(record)
    release += extra_delay
    pause = release - time.monotonic()
    if pause > 0:
        time.sleep(pause)


def _run_node(
    scenario: Scenario, index: int, port: int, run_id: str, options: Options, pipes: _Pipes
) -> None:
    """Everything one forked node does, reporting each step to the parent."""
    report_fd = pipes.report[1]
    is_restarter = index == scenario.num_nodes - 1
    params = _rendezvous_parameters(scenario, index, port, run_id, options.timeout)
    _report(report_fd, "ready", index, 0)

    _await_release(pipes.go_round[0], scenario.node0_delay if index == 0 else 0.0)
    cpu_before = time.process_time()
    handler = get_rendezvous_handler(params)
    handler.next_rendezvous()
    _report(report_fd, "round", index, time.monotonic())
    # All threads of this node, the store server's on node 0 included.
    _report(report_fd, "cpu", index, time.process_time() - cpu_before)

    if scenario.with_restart:
        _await_release(pipes.go_restart[0])
        if not is_restarter:
            # What the agent's monitor loop does while its workers are healthy.
            # Agents poll on their own cadence, not in step with each other.
            time.sleep(random.uniform(0.0, options.monitor_interval))
            while handler.num_nodes_waiting() == 0:
                time.sleep(options.monitor_interval)
        handler.next_rendezvous()
        _report(report_fd, "restart", index, time.monotonic())

    _await_release(pipes.go_shutdown[0])
    handler.shutdown()
    _report(report_fd, "done", index, 0)
    os.read(pipes.leave[0], 1)


def _node_process(
    scenario: Scenario, index: int, port: int, run_id: str, options: Options, pipes: _Pipes,
    parent_pid: int,
) -> None:
    """Entry of a forked child: bound its life, run the node, and leave with os._exit."""
    status = 1
    try:
        # The kernel kills this node if the parent dies; SIGALRM's default action
        # ends it if anything below hangs past the measurement's timeout.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            return
        signal.alarm(int(options.timeout) + 5)
        pipes.keep_only(
            pipes.report[1], pipes.go_round[0], pipes.go_restart[0], pipes.go_shutdown[0],
            pipes.leave[0],
        )
        _run_node(scenario, index, port, run_id, options, pipes)
        status = 0
    except BaseException as error:  # reported to the parent, which fails the measurement
        try:
            _report(pipes.report[1], "error", index, f"{type(error).__name__}: {error}")
        except OSError:
            pass
    finally:
        os._exit(status)


# -------------------------------------------------------------- parent side


def _free_port() -> int:
    """The next port from ``_PORTS`` that nothing holds now; each measurement gets a new one."""
    for port in _PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise MeasurementFailed(f"no free port left in {_PORTS}")


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
    os.write(fd, _TIME_RECORD.pack(instant) * num_nodes)
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
    port = _free_port()
    run_id = f"bench-{uuid.uuid4().hex[:12]}"
    pipes = _Pipes()
    pids: List[int] = []
    parent_pid = os.getpid()
    deadline = time.monotonic() + options.timeout
    outcome = Outcome()
    finished_cleanly = False
    try:
        for index in range(n):
            pid = os.fork()
            if pid == 0:
                _node_process(scenario, index, port, run_id, options, pipes, parent_pid)
            pids.append(pid)
        pipes.keep_only(
            pipes.report[0], pipes.go_round[1], pipes.go_restart[1], pipes.go_shutdown[1],
            pipes.leave[1],
        )
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


# ------------------------------------------------------------------ report


def _median_ms(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) * 1000.0 if values else None


def _format_ms(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _format_ratio(value: Optional[float], baseline: Optional[float]) -> str:
    if value is None or not baseline:
        return "n/a"
    return f"{value / baseline:.1f}x"


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


def format_table(samples: Dict[Tuple[str, int], Samples], options: Options) -> str:
    """A Markdown table of medians, with ratios against the metaflow backend."""
    late = f"node 0 late by {options.late_delay * 1000:.0f} ms: extra ms"
    header = ["nodes", "backend", "round ms", "vs metaflow", late, "vs metaflow",
              "restart ms", "vs metaflow", "CPU ms per node", "other programs' CPUs",
              "runs ok/failed"]
    rows = [header, ["---:", ":---"] + ["---:"] * (len(header) - 2)]
    for n in options.node_counts:
        base = samples.get(("metaflow", n), Samples())
        base_round, base_late, base_restart = (
            _median_ms(base.round_s), _median_ms(base.late_round_s), _median_ms(base.restart_s))
        for backend in options.backends:
            bucket = samples[(backend, n)]
            round_ms, late_ms, restart_ms = (
                _median_ms(bucket.round_s), _median_ms(bucket.late_round_s),
                _median_ms(bucket.restart_s))
            ok = len(bucket.round_s) + len(bucket.late_round_s)
            rows.append([
                str(n), backend,
                _format_ms(round_ms), _format_ratio(round_ms, base_round),
                _format_ms(late_ms), _format_ratio(late_ms, base_late),
                _format_ms(restart_ms), _format_ratio(restart_ms, base_restart),
                _format_ms(_median_ms(bucket.node_cpu_s)),
                f"{statistics.median(bucket.foreign_cpus):.2f}" if bucket.foreign_cpus else "n/a",
                f"{ok}/{len(bucket.failures)}",
            ])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def goal_line(
    samples: Dict[Tuple[str, int], Samples], num_nodes: int = 32, factor: float = 20.0
) -> str:
    """Whether metaflow's median round beats c10d's ``factor`` times, for both start orders."""
    title = f"Goal, metaflow at least {factor:g}x faster than c10d at {num_nodes} nodes"
    ours, theirs = samples.get(("metaflow", num_nodes)), samples.get(("c10d", num_nodes))
    if ours is None or theirs is None:
        return f"{title}: not measured."
    verdicts = []
    for name, mine, other in (("all start together", ours.round_s, theirs.round_s),
                              ("node 0 late", ours.late_round_s, theirs.late_round_s)):
        if not mine or not other:
            verdicts.append(f"{name}: not measured")
            continue
        ratio = statistics.median(other) / statistics.median(mine)
        verdicts.append(f"{name}: {ratio:.1f}x ({'met' if ratio >= factor else 'MISSED'})")
    return f"{title}: " + "; ".join(verdicts)


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


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="2,8,32,128",
                        help="comma-separated node counts (default: %(default)s)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated backends to measure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements per backend, node count and start order "
                             "(default: %(default)s)")
    parser.add_argument("--late-delay", type=float, default=0.2,
                        help="seconds node 0 starts after the others in the late variant "
                             "(default: %(default)s)")
    parser.add_argument("--monitor-interval", type=float, default=0.1,
                        help="how often the other nodes poll num_nodes_waiting() in the restart, "
                             "as torchrun's --monitor-interval (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one measurement may take before its nodes are killed "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        node_counts = tuple(int(part) for part in args.nodes.split(",") if part.strip())
    except ValueError:
        parser.error(f"--nodes {args.nodes!r}: expected comma-separated integers")
    if not node_counts or min(node_counts) < 2:
        parser.error("--nodes: every count must be at least 2")
    if max(node_counts) * _TIME_RECORD.size > select.PIPE_BUF:
        parser.error(f"--nodes: at most {select.PIPE_BUF // _TIME_RECORD.size} nodes")
    backends = tuple(part.strip() for part in args.backends.split(",") if part.strip())
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    if args.repeats < 1 or args.late_delay <= 0 or args.monitor_interval <= 0 or args.timeout <= 0:
        parser.error("--repeats, --late-delay, --monitor-interval and --timeout must be positive")
    return Options(
        node_counts, backends, args.repeats, args.late_delay, args.monitor_interval, args.timeout
    )


def _warn_unless_loopback_only() -> None:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        print(f"warning: network interfaces {', '.join(interfaces)} are visible: outside the "
              f"namespace of run_in_netns.sh, TCPStore's reverse DNS lookups may stall for "
              f"seconds and distort the numbers.", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    _warn_unless_loopback_only()
    rendezvous.register()
    # Every backend's creator imports its implementation on first use; import
    # them all here, before forking, so that no node pays an import inside the
    # measurement.
    for module in ("rendezvous.handler",
                   "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
                   "torch.distributed.elastic.rendezvous.static_tcp_rendezvous"):
        importlib.import_module(module)

    # Python's socket module imports its idna codec on the first name lookup;
    # a node would pay that import inside the measurement, so do it here once.
    socket.getaddrinfo(LOOPBACK, 0)
    # Objects frozen here are never touched by the collector in the nodes, which
    # keeps the forked copies sharing their memory with the parent.
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    foreign_load = ForeignLoad()
    samples = run_benchmark(options)
    print(format_table(samples, options))
    print()
    print(goal_line(samples))
    print(f"Medians of {options.repeats} runs each; {time.monotonic() - started:.0f} s in all; "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs, of which other programs kept "
          f"{foreign_load.cpus():.2f} busy on average meanwhile.")
    failures = sum(len(bucket.failures) for bucket in samples.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
