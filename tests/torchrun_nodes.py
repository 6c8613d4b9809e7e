"""Start the nodes of a job as real torchrun processes on this machine, and clean them up.

Each node is one torchrun agent (``torchrun`` or ``python -m rendezvous``) with
its own MF_PARALLEL_* environment. torchrun starts every worker in a session of
its own, and a killed agent's workers are re-parented, so processes are found by
a marker variable in their environment instead of by process tree: that is how
``close`` kills everything of a job, even after a failed test.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

SCRIPTS = Path(__file__).parent / "scripts"
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


MARKER_VAR = "METAFLOW_TORCHRUN_TEST_JOB"


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_with_marker(marker: str) -> List[int]:
    """PIDs of the live processes whose environment carries ``MARKER_VAR=marker``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_processes(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
        env = dict(os.environ)
        env.update(
            MF_PARALLEL_NODE_INDEX=str(node_index),
            MF_PARALLEL_NUM_NODES=str(self.num_nodes),
            MF_PARALLEL_MAIN_IP=self.main_ip,
            **{MARKER_VAR: self.run_id},
            OMP_NUM_THREADS="1",
        )
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
    return [line for line in text.splitlines() if needle in line]
