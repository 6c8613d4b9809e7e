"""Hang diagnosis: how fast it names the culprit, what watching costs a step, and node 0's traffic.

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.hangs --repeats 3

Every job runs on two test hosts (network namespaces, root needed; see
``tests/harness/netns_hosts``), one torchrun agent each, the ranks running
``tests/flows/workers/hang.py``; from the repository root, whose code it measures.

1. **Time to culprit named**: 2 nodes x 2 ranks, ``hang_timeout=10``; a random
   rank holds the others up (each scenario of the worker); the time from the
   culprit's own stamp as it starts holding to node 0's log naming it, and
   whether the name is right. torch's ``c10d`` and ``static`` backends name no
   one: the job waits in gloo's timeout, 1,800 s by default, then fails.
2. **Step time**: 2 nodes x 1 rank, a loop of small all_reduces (4 floats) timed in
   the worker (wall time, and the worker's CPU time, every thread's), under ``static``,
   ``c10d``, ``metaflow`` with hang diagnosis off (``hang_timeout=0``) and on (the
   default); medians of the runs, interleaved. And what one read of the probe costs
   (``probe``): a process whose flight recorder holds 2,000 collectives reads its
   position as the probe does once a second, and writes it as JSON.
3. **Node 0's store traffic per node**: the training traffic on a network of its
   own (``GLOO_SOCKET_IFNAME=eth1``), so node 1's first interface carries only
   what it exchanges with node 0's store: bytes and packets per second while the
   ranks all_reduce, per backend, and per hang report (a hang of ``--hang-seconds``).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from rendezvous.hangs import probe
from tests.harness.netns_hosts import TestHosts, unavailable_reason
from tests.harness.processes import MARKER_VAR, kill_processes, processes_with_marker
from tests.harness.torchrun_nodes import TORCHRUN, Job, job_on_hosts

WORKER = str(Path(__file__).resolve().parents[1] / "tests" / "flows" / "workers" / "hang.py")
SCENARIOS = ("sleep", "lock", "regex", "loader", "skip")
HANG_TIMEOUT = 10.0
GLOO_DEFAULT_TIMEOUT = 1800.0
BACKENDS = ("static", "c10d", "metaflow, diagnosis off", "metaflow, diagnosis on")
PORT = 29555


def time_to_culprit(hosts: TestHosts, workdir: Path, scenario: str) -> Dict[str, object]:
    """One hung job: seconds from the culprit's stamp to node 0 naming a rank, and which."""
    culprit = random.randrange(4)
    with job_on_hosts(hosts, workdir, WORKER, launcher="module", nproc_per_node=2,
                      rdzv_conf={"hang_timeout": HANG_TIMEOUT, "hang_fail_after": 1},
                      script_args=["--scenario", scenario, "--culprit", str(culprit),
                                   "--hold", "600"]) as job:
        job.start()
        deadline = time.monotonic() + 120
        named_at = None
        while named_at is None and time.monotonic() < deadline:
            output = job.output(0)
            if "metaflow rendezvous (node 0): hang: " in output:
                named_at = time.time()
            time.sleep(0.02)
        job.wait(timeout=120)
        texts = [job.output(node) for node in range(2)]
    stamp = float(next(text.split("holding rank=")[1].split("at=")[1].split()[0]
                       for text in texts if "holding rank=" in text))
    line = next(line for line in texts[0].splitlines() if "(node 0): hang: " in line)
    right = f" for rank {culprit} (node {culprit // 2}, local rank {culprit % 2})," in line
    return {"seconds": None if named_at is None else named_at - stamp, "right": right}


def backend_command(backend: str, node: int, addresses: Sequence[str], run_id: str,
                    script_args: Sequence[str]) -> List[str]:
    """The torchrun agent of node ``node`` (of 2, one rank each, on ``addresses[node]``) for
    ``static`` or ``c10d``."""
    address = addresses[0]
    common = [TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--monitor-interval=0.1"]
    if backend == "static":
        rendezvous = ["--rdzv-backend=static", f"--master-addr={address}",
                      f"--master-port={PORT}", f"--node-rank={node}"]
    else:
        # c10d finds its host by the hostname, which maps to loopback on these hosts.
        rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint={address}:{PORT}",
                      f"--rdzv-id={run_id}", f"--rdzv-conf=is_host={str(node == 0).lower()}",
                      f"--local-addr={addresses[node]}"]
    return [*common, *rendezvous, WORKER, *script_args]


class Agents:
    """The two agents of one job (one rank each) on two test hosts, of any of ``BACKENDS``."""

    def __init__(self, hosts: TestHosts, workdir: Path, backend: str, script_args: Sequence[str],
                 env: Optional[Dict[str, str]] = None, rdzv_conf: Optional[Dict[str, float]] = None):
        self.marker = f"bench-{uuid.uuid4().hex[:10]}"
        self.job: Optional[Job] = None
        self.logs = [workdir / f"{self.marker}-{node}.log" for node in range(2)]
        self.procs: List[subprocess.Popen] = []
        if backend.startswith("metaflow"):
            conf = {"hang_timeout": 0} if backend.endswith("off") else dict(rdzv_conf or {})
            self.job = job_on_hosts(hosts, workdir, WORKER, launcher="torchrun", rdzv_conf=conf,
                                    script_args=list(script_args), env=env)
            self.job.start()
            return
        for node in range(2):
            with open(self.logs[node], "wb") as log:
                command = backend_command(backend, node, hosts.addresses, self.marker,
                                          script_args)
                self.procs.append(subprocess.Popen(
                    hosts.command_prefix(node) + command, stdout=log, stderr=subprocess.STDOUT,
                    # The test hosts map their hostname to loopback, as stock Debian does:
                    # gloo needs the interface named here, which our backend finds itself.
                    env={**os.environ, "OMP_NUM_THREADS": "1", MARKER_VAR: self.marker,
                         "GLOO_SOCKET_IFNAME": "eth0", **(env or {})},
                    cwd=workdir, start_new_session=True))

    def wait(self, timeout: float = 180) -> None:
        if self.job is not None:
            self.job.wait(timeout=timeout)
        for proc in self.procs:
            proc.wait(timeout=timeout)

    def output(self, node: int) -> str:
        if self.job is not None:
            return self.job.output(node)
        return self.logs[node].read_text(errors="replace")

    def close(self) -> None:
        if self.job is not None:
            self.job.close()
        kill_processes(processes_with_marker(self.marker))


def step_time(hosts: TestHosts, workdir: Path, backend: str, rounds: int) -> Dict[str, float]:
    """Mean wall and CPU microseconds per all_reduce of rank 0 in one job of ``backend``."""
    agents = Agents(hosts, workdir, backend, ["--scenario", "steps", "--rounds", str(rounds)])
    try:
        agents.wait()
        output = agents.output(0)
    finally:
        agents.close()
    return {name: float(output.split(f"{name}=")[1].split()[0]) for name in ("mean_us", "cpu_us")}


def probe_costs(reads: int) -> Dict[str, float]:
    """What the probe costs a worker whose flight recorder holds 2,000 collectives (its
    default), in seconds: a read of its position with the status changed since the last
    (what a training loop meets every second: ``read``), and a read of the entries (once
    per ``probe.ARRIVALS_EVERY``, and once per collective that stays in flight: ``entries``)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    tensor = torch.ones(4)
    for _ in range(2000):
        dist.all_reduce(tensor)
    recorder = probe._Recorder()
    recorder.read()  # the first read takes the entries too
    reads_taken, entries_taken = [], []
    for _ in range(reads):
        dist.all_reduce(tensor)
        started = time.perf_counter()
        json.dumps(recorder.read())
        reads_taken.append(time.perf_counter() - started)
        started = time.perf_counter()
        recorder._read_entries(
            [torch._C._distributed_c10d._dump_fr_trace], {}, time.time())
        entries_taken.append(time.perf_counter() - started)
    dist.destroy_process_group()
    return {"read": statistics.median(reads_taken), "entries": statistics.median(entries_taken)}


def interface_counters(hosts: TestHosts, node: int) -> Dict[str, int]:
    """Bytes and packets host ``node``'s first interface (eth0) sent and received so far."""
    shown = subprocess.run(["ip", "-n", hosts.names[node], "-s", "-j", "link", "show", "eth0"],
                           capture_output=True, text=True, check=True)
    stats = json.loads(shown.stdout)[0]["stats64"]
    return {"bytes": stats["rx"]["bytes"] + stats["tx"]["bytes"],
            "packets": stats["rx"]["packets"] + stats["tx"]["packets"]}


def steady_traffic(hosts: TestHosts, workdir: Path, backend: str, seconds: float) -> Dict[str, float]:
    """Node 1's traffic with node 0's store per second while the ranks all_reduce."""
    agents = Agents(hosts, workdir, backend, ["--scenario", "loop", "--hold", str(seconds + 30)],
                    env={"GLOO_SOCKET_IFNAME": "eth1"})
    try:
        _wait_for(agents, "warmed up rank=")
        time.sleep(2)  # past the rendezvous
        before = interface_counters(hosts, 1)
        time.sleep(seconds)
        after = interface_counters(hosts, 1)
    finally:
        agents.close()
    return {name: (after[name] - before[name]) / seconds for name in before}


def hang_traffic(hosts: TestHosts, workdir: Path, hang_seconds: float,
                 baseline: Dict[str, float]) -> Dict[str, float]:
    """Node 1's traffic with node 0's store per hang report, beyond its steady traffic."""
    agents = Agents(hosts, workdir, "metaflow, diagnosis on",
                    ["--scenario", "sleep", "--culprit", "1", "--hold", str(hang_seconds)],
                    env={"GLOO_SOCKET_IFNAME": "eth1"}, rdzv_conf={"hang_timeout": 5})
    try:
        _wait_for(agents, "holding rank=")
        before, started = interface_counters(hosts, 1), time.monotonic()
        agents.wait(timeout=hang_seconds + 120)
        after, seconds = interface_counters(hosts, 1), time.monotonic() - started
        reports = agents.output(1).count("(node 1): hang: ") + agents.output(1).count(
            "(node 1): still hung: ")
    finally:
        agents.close()
    extra = {name: after[name] - before[name] - baseline[name] * seconds for name in before}
    return {"reports": reports, **{name: value / max(reports, 1) for name, value in extra.items()}}


def _wait_for(agents: Agents, needle: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while needle not in agents.output(0) + agents.output(1):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {needle!r} in {timeout} s: {agents.output(0)[-2000:]}")
        time.sleep(0.05)


def culprit_table(hosts: TestHosts, workdir: Path, repeats: int) -> None:
    print(f"## Time to culprit named (hang_timeout={HANG_TIMEOUT:g} s, 2 nodes x 2 ranks)\n")
    print("| scenario | named in s (median) | runs | named right | vs gloo's default timeout |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        runs = [time_to_culprit(hosts, workdir, scenario) for _ in range(repeats)]
        seconds = [run["seconds"] for run in runs if run["seconds"] is not None]
        median = statistics.median(seconds) if seconds else float("nan")
        right = sum(1 for run in runs if run["right"])
        print(f"| {scenario} | {median:.1f} | {len(runs)} | {right}/{len(runs)} "
              f"| {median / GLOO_DEFAULT_TIMEOUT:.4f} ({median:.1f} s vs "
              f"{GLOO_DEFAULT_TIMEOUT:.0f} s, which names no rank) |", flush=True)


def step_table(hosts: TestHosts, workdir: Path, repeats: int, rounds: int) -> None:
    print(f"\n## Step time: {rounds} all_reduces of 4 floats, 2 nodes x 1 rank\n")
    times: Dict[str, List[Dict[str, float]]] = {backend: [] for backend in BACKENDS}
    for _ in range(repeats):
        for backend in BACKENDS:  # interleaved: a slow moment hits every backend alike
            times[backend].append(step_time(hosts, workdir, backend, rounds))

    def median(backend: str, name: str) -> float:
        return statistics.median(run[name] for run in times[backend])

    print("| backend | wall µs per all_reduce | vs static | vs diagnosis off | CPU µs "
          "per all_reduce | vs static | vs diagnosis off | wall µs of each run |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for backend in BACKENDS:
        cells = []
        for name in ("mean_us", "cpu_us"):
            value = median(backend, name)
            cells.append(f"{value:.1f} | {value / median('static', name):.3f} "
                         f"| {value / median('metaflow, diagnosis off', name):.3f}")
        runs = ", ".join(f"{run['mean_us']:.0f}" for run in times[backend])
        print(f"| {backend} | {' | '.join(cells)} | {runs} |", flush=True)


def traffic_table(hosts: TestHosts, workdir: Path, seconds: float, hang_seconds: float) -> None:
    print("\n## Node 1's traffic with node 0's store (gloo on a network of its own)\n")
    print("| backend | bytes/s while training | packets/s |")
    print("| --- | ---: | ---: |")
    steady = {}
    for backend in BACKENDS:
        steady[backend] = steady_traffic(hosts, workdir, backend, seconds)
        print(f"| {backend} | {steady[backend]['bytes']:.0f} | "
              f"{steady[backend]['packets']:.1f} |", flush=True)
    per_report = hang_traffic(hosts, workdir, hang_seconds, steady["metaflow, diagnosis on"])
    print(f"\nPer hang report (hang_timeout=5, a hang of {hang_seconds:g} s, "
          f"{per_report['reports']} reports): {per_report['bytes']:.0f} bytes, "
          f"{per_report['packets']:.0f} packets beyond the steady traffic.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3000, help="all_reduces per step-time run")
    parser.add_argument("--traffic-seconds", type=float, default=20)
    parser.add_argument("--hang-seconds", type=float, default=40)
    parser.add_argument("--parts", default="culprit,steps,probe,traffic",
                        help="which measures, comma-separated (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    reason = unavailable_reason()
    if reason is not None:
        print(f"needs test hosts: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-hangs-"))
    with TestHosts(2) as hosts:
        if "culprit" in parts:
            culprit_table(hosts, workdir, args.repeats)
        if "steps" in parts:
            step_table(hosts, workdir, args.repeats, args.rounds)
    if "probe" in parts:
        costs = probe_costs(reads=50)
        share = costs["read"] / probe.INTERVAL + costs["entries"] / probe.ARRIVALS_EVERY
        print(f"\n## The probe, in a worker whose flight recorder holds 2,000 collectives\n\n"
              f"A read of its position: {costs['read'] * 1e3:.3f} ms, every {probe.INTERVAL:g} s; "
              f"of the recorder's entries: {costs['entries'] * 1e3:.1f} ms, every "
              f"{probe.ARRIVALS_EVERY:g} s: {share:.3%} of one core per worker.", flush=True)
    if "traffic" in parts:
        with TestHosts(2, data_network=True) as hosts:
            traffic_table(hosts, workdir, args.traffic_seconds, args.hang_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
