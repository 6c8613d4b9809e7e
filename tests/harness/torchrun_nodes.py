"""Start the nodes of a job as real torchrun processes on this machine, and clean them up.

Each node is one torchrun agent (``torchrun`` or ``python -m rendezvous``) with
its own MF_PARALLEL_* environment, on loopback or on a test host of its own
(``job_on_hosts``). Every process of a job carries the job's marker (see
``processes``): that is how ``close`` kills everything of a job, even after a
failed test.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from rendezvous.topology import Topology

from .netns_hosts import TestHosts
from .processes import MARKER_VAR, kill_processes, processes_with_marker

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# --rdzv-conf that notices a lost node within seconds, for jobs that fail on purpose.
FAST = {"join_timeout": 60, "heartbeat_interval": 0.5, "heartbeat_timeout": 4}
_POLL_SECONDS = 0.05


class Job:
    """N torchrun agents of one job; use as a context manager.

    ``launcher`` is ``"torchrun"`` (finds the backend through the entry point)
    or ``"module"`` (``python -m rendezvous``). ``host_prefix(i)``, if given,
    is put before node i's command (to run it on a test host).
    """

    def __init__(
        self,
        workdir: Path,
        num_nodes: int,
        script: str,
        script_args: Sequence[str] = (),
        nproc_per_node: int = 1,
        launcher: str = "torchrun",
        torchrun_args: Sequence[str] = (),
        rdzv_conf: Optional[Dict[str, object]] = None,
        env: Optional[Dict[str, str]] = None,
        main_ip: str = "127.0.0.1",
        run_id: Optional[str] = None,
        host_prefix: Optional[Callable[[int], List[str]]] = None,
    ):
        self.workdir = workdir
        self.num_nodes = num_nodes
        self.run_id = run_id or f"test-{uuid.uuid4().hex[:12]}"
        self.main_ip = main_ip
        self.env = dict(env or {})
        launch = [TORCHRUN] if launcher == "torchrun" else [sys.executable, "-m", "rendezvous"]
        conf = ",".join(f"{key}={value}" for key, value in (rdzv_conf or {}).items())
        self.command = [
            *launch,
            f"--nnodes={num_nodes}",
            f"--nproc-per-node={nproc_per_node}",
            "--rdzv-backend=metaflow",
            f"--rdzv-id={self.run_id}",
            *([f"--rdzv-conf={conf}"] if conf else []),
            "--monitor-interval=0.1",
            *torchrun_args,
            str(SCRIPTS / script),
            *script_args,
        ]
        self.host_prefix = host_prefix
        self.procs: Dict[int, subprocess.Popen] = {}

    def node_env(self, node_index: int) -> Dict[str, str]:
        """The environment node ``node_index`` starts with (``env`` of ``start`` aside)."""
        env = dict(os.environ)
        env.update(Topology(node_index, self.num_nodes, self.main_ip).environment())
        env.update({MARKER_VAR: self.run_id}, OMP_NUM_THREADS="1")
        env.update(self.env)
        return env

    def log_path(self, node_index: int) -> Path:
        return self.workdir / f"node{node_index}.log"

    def start(self, nodes: Optional[Iterable[int]] = None, env: Optional[Dict[str, str]] = None) -> None:
        for node_index in range(self.num_nodes) if nodes is None else nodes:
            node_env = self.node_env(node_index)
            node_env.update(env or {})
            with open(self.log_path(node_index), "wb") as log:
                prefix = self.host_prefix(node_index) if self.host_prefix else []
                self.procs[node_index] = subprocess.Popen(
                    prefix + self.command,
                    env=node_env,
                    cwd=self.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def wait(self, timeout: float = 120.0, nodes: Optional[Iterable[int]] = None) -> Dict[int, int]:
        """Return code of each node; fails the test if one is still running at ``timeout``."""
        deadline = time.monotonic() + timeout
        codes = {}
        for node_index in sorted(self.procs if nodes is None else nodes):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                codes[node_index] = self.procs[node_index].wait(remaining)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"node {node_index} still runs after {timeout} s; its log:\n"
                    + self.output(node_index)[-4000:]
                ) from None
        return codes

    def output(self, node_index: int) -> str:
        return self.log_path(node_index).read_text(errors="replace")

    def signal(self, node_index: int, sig: int) -> None:
        self.procs[node_index].send_signal(sig)

    def live_processes(self) -> List[int]:
        """Every live process of this job: agents, workers, orphans."""
        return processes_with_marker(self.run_id)

    def close(self) -> None:
        kill_processes(self.live_processes())
        for proc in self.procs.values():
            proc.wait()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def lines_with(text: str, needle: str) -> List[str]:
    """The lines of ``text`` that contain ``needle``."""
    return [line for line in text.splitlines() if needle in line]


def wait_for_output(job: Job, nodes: Iterable[int], needle: str, timeout: float = 60,
                    while_alive: bool = True) -> None:
    """Wait until every node of ``nodes`` printed ``needle``; AssertionError at ``timeout``.

    With ``while_alive``, it also fails at once when one of ``nodes`` exits
    before all of them printed ``needle``. A benchmark that waits for the line
    a node prints right before it fails on purpose passes False: that node may
    be gone by the time its line is read.
    """
    nodes = list(nodes)
    deadline = time.monotonic() + timeout
    while not all(needle in job.output(node) for node in nodes):
        assert time.monotonic() < deadline, {node: job.output(node)[-2000:] for node in nodes}
        if while_alive:
            for node in nodes:
                assert job.procs[node].poll() is None, job.output(node)
        time.sleep(_POLL_SECONDS)


def job_on_hosts(hosts: TestHosts, workdir: Path, script: str, **job_args: object) -> Job:
    """A job of one node per test host of ``hosts``; node 0's host is the main address."""
    return Job(workdir, hosts.count, script, main_ip=hosts.addresses[0],
               host_prefix=hosts.command_prefix, **job_args)
