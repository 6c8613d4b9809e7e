"""Shared fixtures: run real Metaflow flows in isolation and find the processes they leave.

Flows run through Metaflow's CLI in a subprocess with their own datastore,
metadata and home directory under the test's temporary directory. Every
process of a flow carries a marker variable in its environment, so a test can
check that nothing outlived the flow and the fixture can kill what did.
"""

import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from torchrun_nodes import MARKER_VAR, processes_with_marker

REPO = Path(__file__).resolve().parent.parent
FLOWS = Path(__file__).resolve().parent / "flows"
# "2026-11-24 01:41:37.446 [1795484490747749/train/2 (pid 19591)] text"
_TASK_LINE = re.compile(r"^\S+ \S+ \[(?P<run>[^/\]]+)/(?P<step>[^/\]]+)/(?P<task>[^ \]]+) \(pid \d+\)\] ?")


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


class FlowRunner:
    """Runs flows of ``tests/flows`` in one isolated Metaflow environment."""

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
            TMPDIR=str(root / "tmp"),  # per-rank logs land below the test's directory
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
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            output, _ = process.communicate()
            raise AssertionError(
                f"{flow} {command} {' '.join(args)} still ran after {timeout} s:\n"
                + output.decode("utf-8", errors="replace")[-6000:]
            ) from None
        return FlowRun(process.returncode, output.decode("utf-8", errors="replace"))

    def live_processes(self) -> List[int]:
        """Processes of this runner's flows that are still alive."""
        return processes_with_marker(self.marker)

    def kill_all(self) -> None:
        for pid in self.live_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def flows(tmp_path):
    """A FlowRunner; whatever its flows leave running is killed afterwards."""
    runner = FlowRunner(tmp_path)
    yield runner
    runner.kill_all()
