"""Metaflow's own features on a @torchrun step, as users combine them: live logs of a local
run, @catch, @timeout, resume, the Runner API and a notebook's NBRunner (@retry: test_flows.py)."""

import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.harness.flow_runs import FLOWS, RunningFlow

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)

_LAST_LINE = re.compile(r"LAST LINE rank=(\d) written=([0-9.]+)")
# @timeout(seconds=...) of tests/flows/timed_out.py
TIMEOUT_SECONDS = 10
# "2026-12-04 17:02:16.758 [1796403724562761/train/2 (pid 22984)] ...": a task's line
_TRAIN_LINE = re.compile(r"^(\S+ \S+) \[[^/\]]+/train/", re.MULTILINE)


def test_every_line_shows_at_once_also_when_the_job_then_goes_quiet(flows):
    """Each rank writes 51 lines and one on stderr at once, then sleeps: Metaflow's local
    runtime used to keep the lines that reached its pipe together until the task's next
    output, which never came."""
    script_args = json.dumps({"quiet-seconds": 120})
    flow = RunningFlow(flows.start("two_nodes.py", "--script", "workers/burst_then_quiet.py",
                                   "--script_args", script_args))
    shown = {}  # rank: seconds from writing its last line to the console showing it
    deadline = time.monotonic() + 120
    while len(shown) < 4 and time.monotonic() < deadline and flow.process.poll() is None:
        now = time.time()
        for rank, written in _LAST_LINE.findall(flow.output()):
            shown.setdefault(int(rank), now - float(written))
        time.sleep(0.05)
    output = flow.output()
    flows.kill_all()  # the ranks would sleep 120 s
    assert sorted(shown) == [0, 1, 2, 3], output[-4000:]
    assert max(shown.values()) < 2.0, shown
    for rank in range(4):
        lines = [int(n) for n in re.findall(rf"\[rank{rank}\]: burst rank={rank} line=(\d+)$",
                                            output, re.MULTILINE)]
        assert lines == list(range(50)), (rank, lines)  # none lost, split or out of order
        assert f"[rank{rank}]: stderr rank={rank}" in output


def test_catch_keeps_every_node_and_its_failure(flows):
    run = flows.run("caught.py", "--fail_rank", "3")
    assert run.returncode == 0, run.output[-6000:]
    caught = [line for line in run.task_lines("join") if line.startswith("CAUGHT ")]
    assert len(caught) == 2, run.output[-6000:]
    for node, line in enumerate(caught):
        assert line.startswith(f"CAUGHT node={node} type=metaflow_extensions.torchrun.plugins.errors.TorchrunFailed "), line
        assert ("error=node 1 failed first: global rank 3 (local rank 1) exited with code 1: "
                "ValueError: bad batch on rank 3") in line, line
    assert flows.live_processes() == []


def test_timeout_stops_the_whole_job_and_says_so(flows):
    run = flows.run("timed_out.py")
    assert run.returncode != 0
    # From the train task's first line to its last, on Metaflow's clock: the step's
    # timeout, then every node stopped within 15 s.
    stamps = [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
              for stamp in _TRAIN_LINE.findall(run.output)]
    assert (stamps[-1] - stamps[0]).total_seconds() < TIMEOUT_SECONDS + 15, run.output[-4000:]
    train = "\n".join(run.task_lines("train"))
    assert re.search(r"torchrun failed:\nnode \d failed first: its step was interrupted: "
                     r"TimeoutException: Step train timed out after", train), train[-4000:]
    assert flows.live_processes() == []


def test_resume_reruns_the_failed_step_on_every_node(flows, tmp_path):
    ready = tmp_path / "ready"
    args = ["--script", "workers/fail_unless_file.py", "--script_args", json.dumps({"file": str(ready)})]
    first = flows.run("two_nodes.py", *args)
    assert first.returncode != 0
    assert "RuntimeError: " + str(ready) + " is missing" in first.output
    ready.touch()
    resumed = flows.run("two_nodes.py", command="resume")
    assert resumed.returncode == 0, resumed.output[-6000:]
    train = resumed.task_lines("train")
    for node in (0, 1):
        assert any(line.startswith(f"RESULT node={node} call=1 exit_code=0") for line in train), train
    assert "[rank1]: rank=1 sum=4" in "\n".join(train)
    assert flows.live_processes() == []


def test_the_runner_api_runs_a_torchrun_step(flows):
    program = subprocess.run(
        [sys.executable, str(FLOWS / "runner_program.py"), str(FLOWS / "two_nodes.py"), "nproc=2"],
        env=flows.env, cwd=flows.root, capture_output=True, text=True, timeout=240,
    )
    output = program.stdout + program.stderr
    assert program.returncode == 0, output[-4000:]
    assert "RUNNER STATUS successful run=TwoNodesFlow/" in output, output[-4000:]
    for rank in range(4):
        assert f"[rank{rank}]: rank={rank} world=4" in output, output[-4000:]
    assert flows.live_processes() == []


def test_a_notebook_runs_its_flow_through_nbrunner(flows, tmp_path):
    """Cells run in IPython's shell, as in Jupyter (flows/notebook_session.py): NBRunner runs a
    flow with a script next to the notebook and a function of the flow's own cell; a flow whose
    step uses a function of another cell is refused before anything runs, saying what to do."""
    notebook_dir = tmp_path / "notebook"
    notebook_dir.mkdir()
    shutil.copy(FLOWS / "workers" / "ranks.py", notebook_dir / "train.py")
    session = subprocess.run(
        [sys.executable, str(FLOWS / "notebook_session.py")],
        env=flows.env, cwd=notebook_dir, capture_output=True, text=True, timeout=240,
    )
    output = session.stdout + session.stderr
    assert session.returncode == 0, output[-4000:]
    assert "CELL 2 successful=True values=[100, 101]" in output, output[-4000:]
    for node in (0, 1):
        assert f"[rank{node}]: rank={node} world=2" in output, output[-4000:]
        assert f"NOTEBOOK node={node} script_exit=0 values=[({node}, {100 + node})]" in output
    cell_3 = output[output.index("=== cell 3"):]
    assert "step train uses from_another_cell, which its flow file does not define" in cell_3
    assert "define or import from_another_cell in that cell, above the class" in cell_3
    assert "Workflow starting" not in cell_3, cell_3[-4000:]
    assert flows.live_processes() == []
