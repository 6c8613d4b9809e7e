"""worker/bootstrap.py: how a worker runs the program (script, module), records an uncaught
exception, ends its process groups, and dies with its parent. Each test starts the
bootstrap in a process of its own, as the agent does."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metaflow_extensions.torchrun.plugins.worker import bootstrap as worker_bootstrap
from tests.harness.processes import is_alive

pytestmark = pytest.mark.timeout(60)


BOOTSTRAP = worker_bootstrap.__file__


# A child that imports the bootstrap as a file of its own, as the workers load it.
BOOTSTRAP_ALONE = {**os.environ, "PYTHONPATH": str(Path(BOOTSTRAP).parent)}


def run_bootstrap(tmp_path, kind, target, *args, env=None):
    return subprocess.run(
        [sys.executable, "-u", BOOTSTRAP, kind, target, str(tmp_path), *args],
        cwd=tmp_path,
        env={**os.environ, "TORCHELASTIC_ERROR_FILE": str(tmp_path / "error.json"), "RANK": "5",
             **(env or {})},
        capture_output=True,
        text=True,
    )


def test_bootstrap_runs_the_script_as_python_would(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 'from the script directory'\n")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import pickle, sys
        import helper
        class Point:
            pass
        assert __name__ == "__main__"
        assert pickle.loads(pickle.dumps(Point())).__class__ is Point  # __main__ is this script
        print(sys.argv, sys.path[0], helper.VALUE)
    """))
    done = run_bootstrap(tmp_path, "script", str(script), "--epochs", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{str(script)!r}, '--epochs', '3'] {tmp_path} from the script directory"
    assert not (tmp_path / "error.json").exists()


def test_bootstrap_runs_a_module(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    done = run_bootstrap(tmp_path, "module", "pkg.train", "--x", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "__main__ ['--x', '1']"


def test_bootstrap_records_an_uncaught_exception(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("def step():\n    raise KeyError('missing batch')\n\nstep()\n")
    done = run_bootstrap(tmp_path, "script", str(script))
    assert done.returncode == 1
    record = json.loads((tmp_path / "error.json").read_text())["message"]
    assert record["message"] == "KeyError: 'missing batch'"
    assert record["extraInfo"]["rank"] == "5" and int(record["extraInfo"]["timestamp"]) > 0
    traceback_text = record["extraInfo"]["py_callstack"]
    assert traceback_text.startswith("Traceback (most recent call last):\n  File \"" + str(script))
    assert "bootstrap.py" not in traceback_text and "runpy" not in traceback_text
    assert done.stderr == traceback_text  # what the worker prints is the same clean traceback


def test_bootstrap_keeps_exit_codes_and_an_existing_error_file(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nsys.exit(3)\n")
    assert run_bootstrap(tmp_path, "script", str(script)).returncode == 3
    assert not (tmp_path / "error.json").exists()
    (tmp_path / "error.json").write_text('{"written by": "the program"}')
    script.write_text("raise ValueError('x')\n")
    assert run_bootstrap(tmp_path, "script", str(script)).returncode == 1
    assert json.loads((tmp_path / "error.json").read_text()) == {"written by": "the program"}


# A one-process gloo group; at exit the program reports whether a group is still up.
GROUP_PROGRAM = textwrap.dedent("""
    import atexit, os, socket, sys
    import torch.distributed as dist
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(probe.getsockname()[1]),
                          WORLD_SIZE="1", RANK="0")
    atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
    dist.init_process_group("gloo")
    dist.new_group([0])
    {ending}
""")


@pytest.mark.parametrize(
    "ending, code, left_initialized",
    [("pass", 0, False), ("sys.exit(0)", 0, False), ("sys.exit(None)", 0, False),
     ("sys.exit(3)", 3, True), ("raise ValueError('boom')", 1, True)],
)
def test_bootstrap_ends_the_groups_of_a_successful_program_only(tmp_path, ending, code,
                                                                left_initialized):
    script = tmp_path / "train.py"
    script.write_text(GROUP_PROGRAM.format(ending=ending))
    done = run_bootstrap(tmp_path, "script", str(script))
    assert done.returncode == code, done.stderr
    assert done.stdout.strip().endswith(f"initialized at exit: {left_initialized}"), done.stdout


def test_bootstrap_imports_nothing_for_a_program_without_torch_distributed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import atexit, sys\n"
                      "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith('torch'))))\n")
    done = run_bootstrap(tmp_path, "script", str(script))
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_a_destroy_that_hangs_ends_the_worker_with_success_in_bounded_time(tmp_path):
    # A stand-in torch.distributed whose destroy never returns, as NCCL's can with peers gone.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, threading, types
            import bootstrap as worker_bootstrap
            stuck = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                          destroy_process_group=threading.Event().wait)
            sys.modules["torch.distributed"] = stuck
            worker_bootstrap._DESTROY_TIMEOUT_SECONDS = 0.2
            worker_bootstrap.end_process_groups()
            print("not reached")
        """)],
        capture_output=True, text=True, timeout=30, env=BOOTSTRAP_ALONE,
    )
    assert done.returncode == 0
    assert "not reached" not in done.stdout
    assert "destroying the process group took over 0.2 s; exiting without waiting" in done.stderr


def test_child_dies_with_its_parent(tmp_path):
    # The parent starts a sleeping child that asked for SIGKILL on its parent's death, then exits.
    parent = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import functools, os, signal, subprocess, sys
            from bootstrap import die_with_parent
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                     preexec_fn=functools.partial(die_with_parent, signal.SIGKILL, os.getpid()))
            print(child.pid)
        """)],
        capture_output=True,
        text=True,
        env=BOOTSTRAP_ALONE,
    )
    child = int(parent.stdout)
    deadline = time.monotonic() + 30
    while is_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(child)


def test_a_line_redrawn_with_carriage_returns_goes_on_as_its_latest_state():
    import io

    out, now = io.StringIO(), [0.0]
    lines = worker_bootstrap.ProgressLines(out, interval=2.0, clock=lambda: now[0])
    lines.write("plain ")
    assert out.getvalue() == ""  # a whole line at a time
    lines.write("text\n")
    for step in range(1, 31):  # tqdm's way: "\r" and the new state, no newline
        now[0] = step * 0.5
        lines.write(f"\rtraining: {step}/30")
    lines.write("\n")
    lines.write("\rlast 1/2")
    lines.write("\rlast 2/2")
    assert out.getvalue().splitlines()[-1] == "last 1/2"  # the final state waits for the end
    lines.finish()
    shown = out.getvalue().splitlines()
    assert shown[0] == "plain text"
    bar = [line for line in shown if line.startswith("training")]
    # at most one state per 2 s of the 15 s, and the final one; no "\r" handed on
    assert bar == [f"training: {step}/30" for step in (1, 5, 9, 13, 17, 21, 25, 29, 30)]
    assert shown[-2:] == ["last 1/2", "last 2/2"] and "\r" not in out.getvalue()
    assert lines.encoding == out.encoding  # the rest is the wrapped stream's
