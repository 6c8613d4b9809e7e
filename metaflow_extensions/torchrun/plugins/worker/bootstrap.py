"""Runs a user's torchrun program, unchanged, inside each worker process.

torchrun starts ``python -u bootstrap.py KIND TARGET SEARCH_DIR ARGS...``
where KIND is ``script`` (TARGET is a file), ``module`` (TARGET is a dotted
name found from SEARCH_DIR) or ``function`` (TARGET is ``module:qualname``,
ARGS are the file of its pickled arguments and the directory for its return
value). The bootstrap

- makes the worker die with its torchrun agent (``PR_SET_PDEATHSIG`` on
  Linux), so that a killed agent leaves no worker holding a GPU;
- makes stdout and stderr hand on whole lines only (``ProgressLines``):
  torchrun's ``-u`` would otherwise write ``print("x")`` as two writes, and a
  progress bar redraws its line with ``\\r``; the agent's log tailer, which
  reads by lines, then split lines between rank prefixes;
- runs TARGET as ``__main__`` with ``sys.argv`` and ``sys.path[0]`` as
  ``python TARGET ARGS`` or ``python -m TARGET ARGS`` would set them; or
  imports a function's module from SEARCH_DIR, calls the function once with
  its arguments and saves what it returned, pickled (``save_return_value``;
  ``worker.files`` reads the values back for the task);
- on an uncaught exception, writes torchelastic's error file (so the agent and
  the other nodes can name the failing rank and its error; ``worker.files``
  reads it back for the task), prints the traceback without the
  bootstrap's own frames, and exits with code 1 as Python does;
- after the program succeeded (it returned, or exited with code 0), destroys
  the process groups it left initialized, runs its exit hooks and exits with
  0 without the interpreter's teardown: torch 2.13 often aborts such a process
  there (``terminate called without an active exception``, SIGABRT) although
  all its work is done. See ``exit_after_success``.

This file is run by path in the worker, and imported by the task for
``die_with_parent`` and the layout of what it writes: it uses the standard
library only, imports nothing of ours (a user's module may share a name with
one of our packages) and must stay importable without Metaflow.
"""

import atexit
import ctypes
import importlib
import json
import math
import os
import pickle
import runpy
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, List, NoReturn, Optional

_PR_SET_PDEATHSIG = 1
# How long destroying the program's process groups may take. NCCL's destroy can
# wait on work still queued on the GPU, or on peers that are gone; a finished
# program must never hang there.
_DESTROY_TIMEOUT_SECONDS = 10.0
# Loaded once at import: loading a library between fork and exec can deadlock
# on the loader lock another thread held at fork time.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: int, expected_parent: Optional[int] = None) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits.

    Safe to call between fork and exec (``preexec_fn``): the setting survives
    exec. If the parent is already gone (``expected_parent`` differs from the
    current parent, or the parent is init), the process exits at once, since
    the kernel would never send the signal. A no-op off Linux.
    """
    if _LIBC is None:
        return
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    parent = os.getppid()
    if parent == 1 or (expected_parent is not None and parent != expected_parent):
        os._exit(1)


# How often a line redrawn with "\r" (a progress bar) is handed on in its latest state.
_PROGRESS_SECONDS = 2.0


class ProgressLines:
    """A worker's stdout or stderr that hands torchrun's log tailer whole lines only.

    A progress bar (tqdm, as Lightning and the Trainer draw one) redraws one line
    with ``\\r`` and no newline. torchrun's tailer reads the rank's log file by
    lines, ``\\r`` ending one too, often halfway through a redraw: every update
    became a line of its own, and a torn one (``[rank0]: training: 1/30
    [#..][rank0]:``). Here a redrawn line is handed on as its latest state, ended
    by a newline, at most once per ``interval`` seconds, and always in its final
    state (at its newline, or at the worker's end: ``finish``). Other text goes on
    as it was written, a whole line at a time. Everything but ``write``,
    ``flush`` and ``finish`` is the wrapped stream's (``fileno``, ``isatty``, ...).
    """

    def __init__(self, stream: Any, interval: float = _PROGRESS_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = ""  # the unfinished line; once redrawn, its latest state
        self._shown = ""  # the state of the redrawn line last handed on
        self._shown_at = -math.inf

    def write(self, text: str) -> int:
        with self._lock:
            *lines, rest = (self._pending + text).split("\n")
            for line in lines:
                state = _latest_state(line)
                if state != self._shown or not state:  # its final state, unless just shown
                    self._stream.write(state + "\n")
                self._shown, self._shown_at = "", -math.inf
            self._pending = rest
            if "\r" in rest:
                self._pending = _latest_state(rest)
                now = self._clock()
                if (self._pending and self._pending != self._shown
                        and now - self._shown_at >= self._interval):
                    self._stream.write(self._pending + "\n")
                    self._shown, self._shown_at = self._pending, now
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        """Hand on the unfinished line (a progress bar's final state) as a whole line."""
        with self._lock:
            if self._pending and self._pending != self._shown:
                self._stream.write(self._pending + "\n")
            self._pending = self._shown = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _latest_state(line: str) -> str:
    """What a line redrawn with ``\\r`` shows last: its last non-empty part."""
    parts = [part for part in line.split("\r") if part]
    return parts[-1] if parts else ""


def _finish_output() -> None:
    """Hand on what the program left unfinished on stdout and stderr, then flush both."""
    for stream in (sys.stdout, sys.stderr):
        (stream.finish if isinstance(stream, ProgressLines) else stream.flush)()


# Frames of the machinery between the bootstrap and the user's first line.
_LAUNCH_MODULES = ("runpy", "importlib", "importlib._bootstrap", "importlib._bootstrap_external")


def _user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` from the user's first frame on."""
    tb = error.__traceback__
    while tb is not None and (
        tb.tb_frame.f_globals is globals()
        or tb.tb_frame.f_globals.get("__name__") in _LAUNCH_MODULES
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def record_error(error: BaseException, formatted: str) -> None:
    """Write torchelastic's error file, unless the program already wrote one (``@record``)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    data = {
        "message": {
            "message": f"{type(error).__name__}: {error}",
            "extraInfo": {
                "py_callstack": formatted,
                "timestamp": str(int(time.time())),
                "rank": os.environ.get("RANK", ""),
            },
        }
    }
    try:
        with open(path, "w") as error_file:
            json.dump(data, error_file)
    except OSError as write_error:
        print(f"could not write the error file {path}: {write_error}", file=sys.stderr)


class ReturnValueError(Exception):
    """A function entrypoint returned a value that cannot be pickled."""


def return_value_path(results_dir: str, attempt: str, rank: str) -> str:
    """Where the worker of global ``rank`` saves its return value in ``attempt`` (``worker.files`` reads it)."""
    return os.path.join(results_dir, f"attempt_{attempt}", f"rank_{rank}.pickle")


def save_return_value(value: object, results_dir: str) -> None:
    """Save this worker's return value, pickled, for the launcher.

    The file is named by the attempt (torchrun's restart count) and the global
    rank, and appears whole or not at all.

    Raises:
        ReturnValueError: the value cannot be pickled; the message names the
            rank and the type.
    """
    rank = os.environ.get("RANK", "")
    try:
        data = pickle.dumps(value)
    except Exception as error:  # pickle raises many types (PicklingError, TypeError, ...)
        raise ReturnValueError(
            f"rank {rank} returned a value of type {type(value).__module__}."
            f"{type(value).__qualname__} that cannot be pickled ({error}). Return plain values "
            f"(numbers, strings, lists, dicts, tensors), or save the object to a file and "
            f"return its path."
        ) from None
    path = return_value_path(results_dir, os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".partial", "wb") as partial:
        partial.write(data)
    os.replace(path + ".partial", path)


def run_function(target: str, call_file: str, results_dir: str) -> None:
    """Import the function ``module:qualname``, call it once, save what it returned."""
    module_name, _, qualname = target.partition(":")
    function: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        function = getattr(function, part)
    with open(call_file, "rb") as call:
        args, kwargs = pickle.load(call)
    save_return_value(function(*args, **kwargs), results_dir)


def end_process_groups() -> None:
    """Destroy the process groups a successful program left initialized, within a bound.

    Does nothing, and imports nothing, when the program never imported
    ``torch.distributed`` or left no group. The destroy runs in a daemon
    thread: if it has not returned after ``_DESTROY_TIMEOUT_SECONDS``, the
    worker flushes its output and exits with code 0 at once, since the program
    itself succeeded, rather than wait, or be aborted by the teardown the
    destroy was meant to avoid.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    destroyer = threading.Thread(target=dist.destroy_process_group, daemon=True)
    destroyer.start()
    destroyer.join(_DESTROY_TIMEOUT_SECONDS)
    if destroyer.is_alive():
        print(
            f"metaflow-torchrun: destroying the process group took over "
            f"{_DESTROY_TIMEOUT_SECONDS:g} s; exiting without waiting (the program succeeded)",
            file=sys.stderr,
        )
        _exit_zero_now()


def _exit_zero_now() -> NoReturn:
    """Flush what the worker printed and exit with code 0, skipping the teardown."""
    _finish_output()
    os._exit(0)


def exit_after_success() -> NoReturn:
    """End the worker of a program that succeeded, with code 0 and without the teardown.

    The program's process groups are destroyed (``end_process_groups``), its
    other threads are waited for and its exit hooks run, as at a normal exit.
    Then the worker exits at once: the interpreter's teardown runs C++
    destructors of torch and of libraries, and one that finds a thread still
    attached aborts the process (SIGABRT) after all its work is done.
    """
    end_process_groups()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    _exit_zero_now()


def main(argv: List[str]) -> None:
    kind, target, search_dir, *args = argv
    die_with_parent(signal.SIGKILL)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    sys.stdout, sys.stderr = ProgressLines(sys.stdout), ProgressLines(sys.stderr)
    atexit.register(_finish_output)  # an exit through the interpreter (a failure)
    sys.path[0] = search_dir
    sys.argv = [target, *args]  # run_module replaces argv[0] with the module's file
    try:
        if kind == "function":
            sys.argv = [target]
            run_function(target, *args)
        elif kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    except SystemExit as stop:
        if stop.code in (None, 0):
            exit_after_success()
        raise
    except Exception as error:
        formatted = _user_traceback(error)
        record_error(error, formatted)
        sys.stderr.write(formatted)
        _finish_output()
        sys.exit(1)
    exit_after_success()


if __name__ == "__main__":
    main(sys.argv[1:])
