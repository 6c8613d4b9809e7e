"""The hang probe: runs inside each torchrun worker and tells its agent where the worker is.

``start`` (called by ``site/sitecustomize.py`` as the worker's interpreter
starts, before the user's script) does two things, and only in a process
whose parent is the agent that asked for it (``AGENT_PID_VAR``), so that a
data loader's worker or any other Python the script starts is left alone:

- it registers ``faulthandler`` for ``STACK_SIGNAL``: on that signal every
  thread's Python stack goes to ``rank-<R>.stacks`` in ``DIRECTORY_VAR``'s
  directory (the agent empties the file first);
- it starts a daemon thread that, once the script initialized
  ``torch.distributed``, reads the worker's flight recorders once per second
  (``torch._C._distributed_c10d._dump_fr_trace``, which records gloo's
  collectives too, and ``_dump_nccl_trace`` where there is one; see
  ``_Recorder`` for what each read costs) and, when its position changed,
  writes ``rank-<R>.json`` (else touches it, so that its time says the thread
  still runs: it stops while a C call holds the GIL):
  per process group, the last collective entered and completed, its op and
  when it was entered; and when it entered a sample of its recent collectives
  (``arrivals``), from which the card finds stragglers. The thread never
  imports torch itself and never raises.

This file is loaded by path in the worker and imported by the agent for the
file names and the record's layout: standard library only, nothing of ours.
"""

import faulthandler
import json
import os
import pickle
import signal
import sys
import sysconfig
import threading
import time
from typing import Any, Dict, List, Optional

DIRECTORY_VAR = "METAFLOW_RENDEZVOUS_HANG_DIR"
AGENT_PID_VAR = "METAFLOW_RENDEZVOUS_AGENT_PID"
# Directories (os.pathsep-separated) of the code that starts the user's program in a
# worker, such as a launcher's bootstrap script: its frames are not the user's either.
LAUNCHER_DIRS_VAR = "METAFLOW_RENDEZVOUS_HANG_LAUNCHER_DIRS"
# A real-time signal: no library uses it, and its default action (end the
# process) never happens, since the agent signals only workers that registered.
STACK_SIGNAL: Optional[int] = (
    signal.SIGRTMIN + 6 if hasattr(signal, "SIGRTMIN") else None  # type: ignore[attr-defined]
)
# How often the thread reads the flight recorder: also the resolution of a wait's start.
INTERVAL = 1.0
# torch's flight recorders: the generic one (gloo's collectives, and NCCL's on some
# releases; from torch 2.8 on) and, on CUDA builds, ProcessGroupNCCL's own (NCCL's
# collectives only). A worker whose collectives none of them records has its positions
# unknown, and the agent says that hang diagnosis is off.
_GENERIC_RECORDER = "_dump_fr_trace"
_NCCL_RECORDER = "_dump_nccl_trace"
# How often a rank reads when it entered its recent collectives (for the card's
# stragglers), and how many of them it reports, at most.
ARRIVALS_EVERY = 10.0
ARRIVALS_SAMPLE = 64


# The hang directory also holds the backend's newest hang report (``watch``), for the card.
REPORT_FILE = "report.json"


def progress_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rank-{rank}.json")


def stacks_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rank-{rank}.stacks")


def read_progress(path: str) -> Optional[Dict[str, Any]]:
    """A record ``rank-<R>.json`` holds, None if it cannot be read."""
    try:
        with open(path) as progress_file:
            record = json.load(progress_file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_json(path: str, data: Dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON at once: a reader sees the old file or the new.

    Raises:
        OSError: the directory cannot be written.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as json_file:
        json.dump(data, json_file)
    os.replace(temporary, path)


def start() -> bool:
    """Start the probe in this worker, if its agent asked for one. Never raises.

    Returns whether it started.
    """
    directory = os.environ.get(DIRECTORY_VAR)
    try:
        if not directory or os.getppid() != int(os.environ.get(AGENT_PID_VAR, "-1")):
            return False
        rank = int(os.environ["RANK"])
        stacks = open(stacks_path(directory, rank), "a")  # held open: the handler writes to it
        if STACK_SIGNAL is not None:
            faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True, chain=False)
        probe = _Probe(directory, rank, stacks_signal=STACK_SIGNAL)
        threading.Thread(target=probe.run, name="metaflow-rdzv-hang-probe", daemon=True).start()
        return True
    except Exception as error:  # the user's script runs either way
        print(f"metaflow rendezvous: hang diagnosis is off in this worker: {error!r}",
              file=sys.stderr, flush=True)
        return False


class _Probe:
    """The thread's state: what it last wrote, to write only changes."""

    def __init__(self, directory: str, rank: int, stacks_signal: Optional[int]):
        self._path = progress_path(directory, rank)
        self._identity = {
            "pid": os.getpid(),
            "rank": rank,
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
            "node": int(os.environ.get("GROUP_RANK", "0")),
            "world_size": int(os.environ.get("WORLD_SIZE", "0")),
            "main_thread": threading.main_thread().ident,
            "stack_signal": stacks_signal,
            "library_dirs": _library_dirs(),
        }
        self._last: Dict[str, Any] = {"groups": [], "positions_known": True}

    def run(self) -> None:
        failures = 0
        recorder = _Recorder()
        self._write(self._last)
        while failures < 3:
            time.sleep(INTERVAL)
            try:
                position = recorder.read()
                if position != self._last:
                    self._write(position)
                else:  # the file's time says the probe still runs (no C call holds the GIL)
                    os.utime(self._path)
                failures = 0
            except Exception:  # a torch whose recorder changed shape: keep quiet, try again
                failures += 1
        # Its recorder cannot be read: its position is unknown (the agent says diagnosis is
        # off), rather than a silent probe, which reads as a rank holding the GIL.
        try:
            self._write({"groups": [], "positions_known": False})
        except OSError:
            pass

    def _write(self, position: Dict[str, Any]) -> None:
        self._last = position
        write_json(self._path, {**self._identity, **position})


class _Recorder:
    """Reads this worker's position from its flight recorders, cheaply.

    Each read asks the recorders for their status only (tens of microseconds): per
    process group, the last collective entered and completed. Their entries (about
    7 microseconds each, up to the recorder's 2,000) are read only for what the status
    lacks: the op and start of a collective still in flight at a second read (a wait
    worth naming), and every ``ARRIVALS_EVERY`` seconds the times of the collectives
    entered since, for the card's stragglers.
    """

    def __init__(self) -> None:
        self._status: Dict[str, Any] = {}
        self._ops: Dict[str, "tuple[int, str, float]"] = {}  # group: (seq, op, entered at)
        self._first_seen: Dict[str, "tuple[int, float]"] = {}  # group: (seq, first seen waiting)
        self._arrivals: List[List[Any]] = []
        self._arrivals_read = 0.0

    def read(self) -> Dict[str, Any]:
        """This worker's position in each process group, and its latest arrivals."""
        dist = sys.modules.get("torch.distributed")
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return {"groups": [], "positions_known": True}
        recorders = _recorders(sys.modules["torch"]._C._distributed_c10d, dist)
        if not recorders:
            return {"groups": [], "positions_known": False}
        status: Dict[str, Any] = {}
        for dump in recorders:
            for name, state in pickle.loads(dump(False, False, True)).get("pg_status", {}).items():
                known = status.get(name)
                if known is None or (state["last_enqueued_collective"]
                                     > known["last_enqueued_collective"]):
                    status[name] = state
        now = time.time()
        unchanged, self._status = status == self._status, status
        entered = {name: state["last_enqueued_collective"] for name, state in status.items()}
        for name, state in status.items():
            if entered[name] > state["last_completed_collective"]:
                if self._first_seen.get(name, (None,))[0] != entered[name]:
                    self._first_seen[name] = (entered[name], now)
            else:
                self._first_seen.pop(name, None)
        unknown_op = any(self._ops.get(name, (None,))[0] != seq for name, seq in entered.items())
        if (unchanged and unknown_op) or now - self._arrivals_read >= ARRIVALS_EVERY:
            self._read_entries(recorders, entered, now)
        members = _group_members(dist)
        groups = []
        for name, state in sorted(status.items()):
            seq, op, entered_at = self._ops.get(name, (None, "", None))
            if seq != entered[name]:
                op, entered_at = "", None
            if entered_at is None and name in self._first_seen:
                entered_at = self._first_seen[name][1]
            groups.append({
                "group": name,
                "ranks": members.get(name, []),
                "entered": max(entered[name], 0),
                "completed": max(state["last_completed_collective"], 0),
                "op": op,
                # A wall-clock time: the agent, on the same machine, measures the wait from it.
                "entered_at": entered_at,
            })
        return {"groups": groups, "positions_known": True, "arrivals": self._arrivals}

    def _read_entries(self, recorders: List[Any], entered: Dict[str, int], now: float) -> None:
        entries = [entry for dump in recorders
                   for entry in pickle.loads(dump(True, False, True)).get("entries", [])
                   if not entry.get("is_p2p")]
        for entry in entries:
            name = str(entry["process_group"][0])
            if entered.get(name) == entry["collective_seq_id"]:
                self._ops[name] = (entry["collective_seq_id"], _op(entry["profiling_name"]),
                                   entry["time_created_ns"] / 1e9)
        since, self._arrivals_read = self._arrivals_read, now
        self._arrivals = _arrivals(
            [entry for entry in entries if entry["time_created_ns"] / 1e9 >= since]
        )


def _recorders(c10d: Any, dist: Any) -> List[Any]:
    """The dump functions of the flight recorders that record this worker's collectives."""
    if hasattr(c10d, _GENERIC_RECORDER):
        return [getattr(c10d, name) for name in (_GENERIC_RECORDER, _NCCL_RECORDER)
                if hasattr(c10d, name)]
    # Only NCCL's own recorder: it records nothing of a gloo job.
    if hasattr(c10d, _NCCL_RECORDER) and "nccl" in str(dist.get_backend()):
        return [getattr(c10d, _NCCL_RECORDER)]
    return []


def _arrivals(recent: List[Dict[str, Any]]) -> List[List[Any]]:
    """When this rank entered a sample of ``recent`` collectives: ``[group, seq, time, round]``
    (``round``: the job's restart round, whose collectives are numbered from 1 again).

    The card compares them across ranks (who arrives last, and how late). Every
    rank samples the same collectives: those whose number is a multiple of a power
    of two, the smallest that keeps at most ``ARRIVALS_SAMPLE``; ranks whose rates
    differ pick powers that are multiples of each other.
    """
    stride = 1
    while len(recent) / stride > ARRIVALS_SAMPLE:
        stride *= 2
    restart_round = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return [
        [str(entry["process_group"][0]), entry["collective_seq_id"],
         round(entry["time_created_ns"] / 1e9, 6), restart_round]
        for entry in recent if entry["collective_seq_id"] % stride == 0
    ][-ARRIVALS_SAMPLE:]


def _op(profiling_name: str) -> str:
    """``gloo:all_reduce`` and ``nccl:all_reduce`` are both ``all_reduce``."""
    return profiling_name.split(":", 1)[-1]


def _group_members(dist: Any) -> Dict[str, List[int]]:
    """Each process group's global ranks, by name; {} where torch keeps them elsewhere."""
    try:
        world = dist.distributed_c10d._world
        return {
            str(name): sorted(int(rank) for rank in world.pg_group_ranks[group])
            for group, name in world.pg_names.items()
        }
    except Exception:
        return {}


def _library_dirs() -> List[str]:
    """Where Python's and the installed packages' files are: frames there are not the user's."""
    paths = sysconfig.get_paths()
    found = {paths.get(name, "") for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    found.update(path for path in sys.path if path.endswith(("site-packages", "dist-packages")))
    found.add(os.path.dirname(os.path.abspath(__file__)))
    found.update(os.environ.get(LAUNCHER_DIRS_VAR, "").split(os.pathsep))
    return sorted(path for path in found if path)
