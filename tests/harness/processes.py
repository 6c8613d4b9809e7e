"""Find and kill the processes of a test job by the marker variable in their environment.

torchrun starts every worker in a session of its own, the card's relays run in
sessions of their own, and a killed agent's workers are re-parented, so the
processes of a job cannot be found by process tree or process group. Every process a test or a
benchmark starts carries ``MARKER_VAR=<the job's marker>`` instead, which its
children inherit: that finds everything of a job, even after a failed test.
"""

import os
import signal
from pathlib import Path
from typing import Iterable, List

MARKER_VAR = "METAFLOW_TORCHRUN_TEST_JOB"


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ignores_signal(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` ignores ``sig`` (the ``SigIgn`` mask of its status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    return False


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
