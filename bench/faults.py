"""How fast a job of real torchrun agents, and a local @torchrun flow, stop after each fault.

Backend faults hit a running 3-node job of plain torchrun agents (one worker
per node, the metaflow backend); the figure is the time from the fault to the
exit of the last agent that must stop. Link cuts run across three test hosts
(network namespaces; root needed), the rest on loopback. Flow faults hit a
local `python flow.py run` of a 2-node x 1-process @torchrun step whose ranks
idle (tests/flows/two_nodes.py); the figure is the time from the fault until
no process of the run (runtime, tasks, agents, workers) is left, found by the
marker variable every process of the run carries. Each figure is the median
of --repeats runs. Run it inside bench/run_in_netns.sh, because TCPStore's
reverse DNS lookups can stall for 5 s on a resolver that drops queries, and
from the repository root (it uses the test suite's ``tests/harness``)::

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.faults --repeats 3
"""

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from tests.harness.flow_runs import FlowRunner, RunningFlow
from tests.harness.netns_hosts import TestHosts, unavailable_reason
from tests.harness.torchrun_nodes import Job, job_on_hosts, wait_for_output

NODES = 3
STARTED = "started rank="
JOIN_TIMEOUT = 10.0


def wait_for_lines(job: Job, nodes: List[int], needle: str) -> None:
    """Wait for ``needle`` from every node of ``nodes``, which may exit right after printing it."""
    wait_for_output(job, nodes, needle, timeout=120, while_alive=False)


def last_exit(job: Job, nodes: List[int], timeout: float = 180) -> float:
    """Monotonic time by which every node in ``nodes`` had exited."""
    deadline = time.monotonic() + timeout
    while any(job.procs[node].poll() is None for node in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes {nodes} still run after {timeout} s")
        time.sleep(0.005)
    return time.monotonic()


def field(text: str, name: str) -> str:
    line = next(line for line in text.splitlines() if name in line)
    return line.rsplit(name, 1)[1].split()[0]


# Each fault takes a job that was built but not started, and returns seconds.

def rank_raises(job: Job, hosts: Optional[TestHosts]) -> float:
    job.env.update(FAIL_RANK="1", FAIL_AFTER="2")
    job.start()
    wait_for_lines(job, [1], "raising at ")
    return last_exit(job, [0, 1, 2]) - float(field(job.output(1), "raising at "))


def worker_killed(job: Job, hosts: Optional[TestHosts]) -> float:
    job.start()
    wait_for_lines(job, [0, 1, 2], STARTED)
    fault = time.monotonic()
    os.kill(int(field(job.output(1), "pid=")), signal.SIGKILL)
    return last_exit(job, [0, 1, 2]) - fault


def agent_killed(job: Job, hosts: Optional[TestHosts]) -> float:
    job.start()
    wait_for_lines(job, [0, 1, 2], STARTED)
    fault = time.monotonic()
    job.signal(2, signal.SIGKILL)
    return last_exit(job, [0, 1]) - fault


def link_cut(index: int) -> Callable[[Job, Optional[TestHosts]], float]:
    def cut(job: Job, hosts: Optional[TestHosts]) -> float:
        job.start()
        wait_for_lines(job, [0, 1, 2], STARTED)
        fault = time.monotonic()
        hosts.cut_link(index)
        return last_exit(job, [0, 1, 2]) - fault
    return cut


def never_arrives(job: Job, hosts: Optional[TestHosts]) -> float:
    """Seconds past join_timeout until the nodes that came have stopped."""
    job.start([0, 1])
    start = time.monotonic()
    return last_exit(job, [0, 1]) - start - JOIN_TIMEOUT


def arrives_late(job: Job, hosts: Optional[TestHosts]) -> float:
    """Seconds from the late node's start until the whole (successful) job ended."""
    job.start([0, 1])
    time.sleep(JOIN_TIMEOUT / 2)
    late = time.monotonic()
    job.start([2])
    end = last_exit(job, [0, 1, 2])
    codes = {node: proc.returncode for node, proc in job.procs.items()}
    if any(codes.values()):
        raise RuntimeError(f"the late node's job failed: {codes}")
    return end - late


FAULTS: Dict[str, tuple] = {
    # name: (fault, script, needs test hosts)
    "a rank raises": (rank_raises, "raise_or_idle.py", False),
    "a worker is SIGKILLed": (worker_killed, "idle.py", False),
    "an agent is SIGKILLed": (agent_killed, "idle.py", False),
    "a worker host's link is cut": (link_cut(2), "idle.py", True),
    "the control host's link is cut": (link_cut(0), "idle.py", True),
    f"a node never arrives (beyond join_timeout={JOIN_TIMEOUT:g})": (never_arrives, "idle.py", False),
    "a node arrives late (job succeeds; from its start to the end)": (arrives_late, "allreduce.py", False),
}


# Flow faults: each takes a FlowRunner and returns {what was timed: seconds}.
FLOW_GONE_TIMEOUT = 60.0


def idle_flow(runner: FlowRunner) -> RunningFlow:
    """A 2-node x 1-process run whose ranks idle for 600 s, once both workers run."""
    return runner.start_until(
        "two_nodes.py", "--script", "workers/raise_rank.py", "--script_args", '{"fail-rank": 99}',
        "--nproc", "1", ready=lambda: len(runner.workers()) == 2,
    )


def until_none_left(runner: FlowRunner, fault: float) -> float:
    gone = runner.wait_until_none_left(FLOW_GONE_TIMEOUT)
    if gone is None:
        left = "\n".join(f"  {pid}: {b' '.join(argv)[:300].decode(errors='replace')}"
                         for pid, argv in runner.command_lines().items())
        raise RuntimeError(
            f"processes of the run still live {FLOW_GONE_TIMEOUT:g} s after the fault:\n{left}")
    return gone - fault


def run_signalled(sig: int, whole_group: bool) -> Callable[[FlowRunner], Dict[str, float]]:
    def stop(runner: FlowRunner) -> Dict[str, float]:
        flow = idle_flow(runner)
        fault = time.monotonic()
        if whole_group:
            os.killpg(flow.process.pid, sig)
        else:
            flow.process.send_signal(sig)
        return {"no process of the run left": until_none_left(runner, fault)}
    return stop


def flow_agent_killed(runner: FlowRunner) -> Dict[str, float]:
    idle_flow(runner)
    agents = runner.agents()
    fault = time.monotonic()
    os.kill(agents[1], signal.SIGKILL)
    while agents[0] in runner.live_processes():
        if time.monotonic() > fault + FLOW_GONE_TIMEOUT:
            raise RuntimeError("node 0's agent did not stop")
        time.sleep(0.005)
    other_agent = time.monotonic() - fault
    return {"node 0's agent exited": other_agent,
            "no process of the run left": until_none_left(runner, fault)}


def flow_control_task_killed(runner: FlowRunner) -> Dict[str, float]:
    idle_flow(runner)
    control = runner.processes_running(b"ubf_control")
    fault = time.monotonic()
    os.kill(control[0], signal.SIGKILL)
    return {"no process of the run left": until_none_left(runner, fault)}


FLOW_FAULTS: Dict[str, Callable[[FlowRunner], Dict[str, float]]] = {
    "Ctrl-C: SIGINT to the run's process group": run_signalled(signal.SIGINT, True),
    "SIGINT to the flow process alone": run_signalled(signal.SIGINT, False),
    "SIGTERM to the flow process alone (kill PID)": run_signalled(signal.SIGTERM, False),
    "SIGTERM to the run's process group": run_signalled(signal.SIGTERM, True),
    "node 1's agent is SIGKILLed": flow_agent_killed,
    "the control task (node 0) is SIGKILLed": flow_control_task_killed,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="run only the faults whose name contains this")
    args = parser.parse_args()
    conf = {"join_timeout": JOIN_TIMEOUT}
    netns_problem = unavailable_reason()
    results: Dict[str, List[float]] = {}
    flow_results: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (fault, script, on_hosts) in FAULTS.items():
            if args.only not in name:
                continue
            if on_hosts and netns_problem:
                print(f"{name}: skipped ({netns_problem})")
                continue
            for repeat in range(args.repeats):
                workdir = Path(tempfile.mkdtemp(dir=scratch))
                env = {"IDLE_SECONDS": "600"}
                if on_hosts:
                    with TestHosts(NODES) as hosts, job_on_hosts(
                        hosts, workdir, script, rdzv_conf=conf, env=env,
                    ) as job:
                        seconds = fault(job, hosts)
                else:
                    with Job(workdir, NODES, script, rdzv_conf=conf, env=env) as job:
                        seconds = fault(job, None)
                results.setdefault(name, []).append(seconds)
                print(f"{name} #{repeat + 1}: {seconds:.2f} s", flush=True)
        for name, flow_fault in FLOW_FAULTS.items():
            if args.only not in name:
                continue
            for repeat in range(args.repeats):
                runner = FlowRunner(Path(tempfile.mkdtemp(dir=scratch)))
                try:
                    timed = flow_fault(runner)
                finally:
                    runner.kill_all()
                for what, seconds in timed.items():
                    flow_results.setdefault(f"{name}: {what}", []).append(seconds)
                    print(f"{name}: {what} #{repeat + 1}: {seconds:.2f} s", flush=True)
    if results:
        print("\n| fault (3 nodes, default heartbeat_timeout=15 s) | seconds, median | runs |")
        print("| --- | --- | --- |")
        for name, values in results.items():
            print(f"| {name} | {statistics.median(values):.2f} | {len(values)} |")
    if flow_results:
        print("\n| fault (local flow, 2 nodes x 1 process, ranks idle) | seconds from the fault, median | runs |")
        print("| --- | --- | --- |")
        for name, values in flow_results.items():
            print(f"| {name} | {statistics.median(values):.2f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
