"""Run real Metaflow flows of ``tests/flows`` in isolation, and find the processes they leave.

Flows run through Metaflow's CLI in a subprocess with their own datastore,
metadata and home directory under a given directory. Every process of a flow
(the runtime, the tasks, the torchrun agents and their workers) carries a
marker variable in its environment, so a caller can check that nothing
outlived the flow and kill what did (see ``processes``). The tests
(``conftest.py``) and the benchmarks both use this module.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from rendezvous.topology import NODE_INDEX_VAR

from .processes import MARKER_VAR, ignores_signal, kill_processes, processes_with_marker

REPO = Path(__file__).resolve().parents[2]
FLOWS = REPO / "tests" / "flows"
# "2026-11-24 01:41:37.446 [1795484490747749/train/2 (pid 19591)] text"
_TASK_LINE = re.compile(r"^\S+ \S+ \[(?P<run>[^/\]]+)/(?P<step>[^/\]]+)/(?P<task>[^ \]]+) \(pid \d+\)\] ?")
_POLL_SECONDS = 0.05


@dataclass
class FlowRun:
    returncode: int
    output: str  # stdout and stderr of `python flow.py run`, interleaved

    def task_lines(self, step: Optional[str] = None) -> List[str]:
        """Lines the tasks printed (of ``step`` only, if given), without Metaflow's prefix."""
        lines = []
        for line in self.output.splitlines():
            match = _TASK_LINE.match(line)
            if match and (step is None or match["step"] == step):
                lines.append(line[match.end():])
        return lines


@dataclass
class RunningFlow:
    """A started ``python flow.py run``; its output is collected as it comes."""

    process: subprocess.Popen
    chunks: List[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=lambda: self.chunks.extend(self.process.stdout),
                                        daemon=True)
        self._reader.start()

    def output(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")

    def finish(self, timeout: float) -> FlowRun:
        """Wait for the flow to end (AssertionError with its output if it does not)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the flow still ran after {timeout} s:\n{self.output()[-6000:]}"
            ) from None
        self._reader.join()
        return FlowRun(self.process.returncode, self.output())


def run_to_end(process: subprocess.Popen, timeout: float, what: str,
               kill_all: Callable[[], None]) -> FlowRun:
    """Collect a started flow command's output until it ends.

    At ``timeout``, ``kill_all()`` ends it and everything it started, and the
    test fails with the command (``what``) and the end of its output.
    """
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all()
        output, _ = process.communicate()
        raise AssertionError(
            f"{what} still ran after {timeout} s:\n" + output.decode("utf-8", errors="replace")[-6000:]
        ) from None
    return FlowRun(process.returncode, output.decode("utf-8", errors="replace"))


class FlowRunner:
    """Runs flows of ``tests/flows`` in one isolated Metaflow environment under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.marker = f"flow-{uuid.uuid4().hex[:12]}"
        self.env: Dict[str, str] = dict(os.environ)
        self.env.update(
            METAFLOW_HOME=str(root / "home"),
            METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root / "datastore"),
            METAFLOW_DEFAULT_DATASTORE="local",
            METAFLOW_DEFAULT_METADATA="local",
            METAFLOW_USER="tester",  # tests run as root, which Metaflow does not accept as a user
            OMP_NUM_THREADS="1",
            TMPDIR=str(root / "tmp"),  # per-rank logs land below the runner's directory
            **{MARKER_VAR: self.marker},
        )
        (root / "tmp").mkdir()

    def start(self, flow: str, *args: str, env: Optional[Dict[str, str]] = None,
              command: str = "run") -> subprocess.Popen:
        """Start ``python flow.py <command> args`` in a session of its own."""
        return subprocess.Popen(
            [sys.executable, str(FLOWS / flow), command, *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, flow: str, *args: str, env: Optional[Dict[str, str]] = None,
            command: str = "run", timeout: float = 200) -> FlowRun:
        process = self.start(flow, *args, env=env, command=command)
        return run_to_end(process, timeout, f"{flow} {command} {' '.join(args)}", self.kill_all)

    def start_until(self, flow: str, *args: str, ready: Callable[[], bool],
                    timeout: float = 200) -> RunningFlow:
        """Start ``python flow.py run args``; return once ``ready()`` holds while it runs."""
        running = RunningFlow(self.start(flow, *args))
        deadline = time.monotonic() + timeout
        while not ready():
            if running.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{flow} never got ready (exit code {running.process.poll()}):\n"
                    + running.output()[-4000:]
                )
            time.sleep(_POLL_SECONDS)
        return running

    def live_processes(self) -> List[int]:
        """Processes of this runner's flows that are still alive."""
        return processes_with_marker(self.marker)

    def wait_until_none_left(self, timeout: float) -> Optional[float]:
        """Monotonic time at which no process of this runner's flows was left, or None at ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.live_processes():
            if time.monotonic() > deadline:
                return None
            time.sleep(_POLL_SECONDS)
        return time.monotonic()

    def command_lines(self) -> Dict[int, List[bytes]]:
        """``{pid: argv}`` of this runner's live processes."""
        found = {}
        for pid in self.live_processes():
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
        return found

    def processes_running(self, *needles: bytes) -> List[int]:
        """Live processes with every one of ``needles`` among their arguments."""
        return [pid for pid, argv in self.command_lines().items() if all(n in argv for n in needles)]

    def workers(self, ignoring: Optional[signal.Signals] = None) -> List[int]:
        """The torchrun workers: ``python -u .../worker/bootstrap.py ...``; with ``ignoring``,
        those that ignore that signal already."""
        return [pid for pid in self._running_file(b"/worker/bootstrap.py")
                if ignoring is None or ignores_signal(pid, ignoring)]

    def relays(self) -> List[int]:
        """The card's relays: ``python -u .../card/relay.py ...``."""
        return self._running_file(b"/card/relay.py")

    def _running_file(self, path_end: bytes) -> List[int]:
        """Live processes that run a Python file whose path ends with ``path_end``."""
        return [pid for pid, argv in self.command_lines().items()
                if len(argv) > 2 and argv[2].endswith(path_end)]

    def agents(self) -> Dict[int, int]:
        """``{node index: pid}`` of the live torchrun agents (``python -u -m rendezvous``)."""
        found = {}
        for pid in self.processes_running(b"-m", b"rendezvous"):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(f"{NODE_INDEX_VAR}=".encode()):
                    found[int(item.split(b"=", 1)[1])] = pid
        return found

    def children(self, parent: int) -> List[int]:
        """Live processes of this runner whose parent is ``parent``."""
        found = []
        for pid in self.live_processes():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(pid)
        return found

    def kill_all(self) -> None:
        kill_processes(self.live_processes())

