"""@torchrun end to end: real Metaflow flows, real torchrun agents and workers, local nodes."""

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pytest

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)


def results(run):
    """``{(node, call): {field: value}}`` from the RESULT lines of tests/flows/two_nodes.py."""
    found = {}
    for line in run.task_lines("train"):
        if line.startswith("RESULT "):
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            found[(int(fields["node"]), int(fields["call"]))] = fields
    return found


def trap_python(directory: Path) -> str:
    """A PATH whose ``python`` is not ours and fails loudly: the venv's bin is not on it."""
    directory.mkdir()
    trap = directory / "python"
    trap.write_text("#!/bin/sh\necho 'the python found on PATH was started' >&2\nexit 97\n")
    trap.chmod(trap.stat().st_mode | stat.S_IEXEC)
    return os.pathsep.join([str(directory), "/usr/bin", "/bin"])


def test_two_nodes_two_processes_from_a_venv_off_path(flows, tmp_path):
    text = 'a "quote", a back\\slash, non-ASCII: é 中 and {"json": 1}'
    run = flows.run(
        "two_nodes.py", "--script", "ranks.py", "--script_args", json.dumps({"text": text}),
        "--nproc", "2",
        env={"PATH": trap_python(tmp_path / "bin")},
    )
    assert run.returncode == 0, run.output[-6000:]
    assert "the python found on PATH was started" not in run.output
    lines = run.task_lines("train")
    for rank in range(4):
        # group rank = Metaflow node index; 1+2+3+4 over 4 ranks; the argument untouched
        assert f"[rank{rank}]: rank={rank} world=4 group_rank={rank // 2} sum=10 text={text}" in lines
        assert f"[rank{rank}]: stderr line of rank {rank}" in lines
        assert f"[rank{rank}]: undecodable \ufffd\ufffd bytes of rank {rank}" in lines
    outcome = results(run)
    assert sorted(outcome) == [(0, 1), (1, 1)]
    for (node, _), fields in outcome.items():
        assert fields["exit_code"] == "0" and fields["restarts"] == "0"
        log_dir = Path(fields["log_dir"])
        assert log_dir.name == f"node-{node}"
        stdout_logs = sorted(log_dir.glob("*/attempt_0/*/stdout.log"))
        assert len(stdout_logs) == 2, list(log_dir.rglob("*"))
        assert f"rank={2 * node + 1} world=4" in stdout_logs[1].read_text(errors="replace")
    assert flows.live_processes() == []


def test_raising_rank_is_named_with_its_traceback(flows):
    # Rank 3 (node 1, local rank 1) raises; ranks 0-2 would idle for 10 minutes.
    run = flows.run(
        "two_nodes.py", "--script", "raise_rank.py", "--script_args", '{"fail-rank": 3}',
        "--nproc", "2",
    )
    assert run.returncode != 0
    out = "\n".join(run.task_lines("train"))
    # node 1 names its own rank with the end of the traceback, without our frames
    failure = out[out.index("global rank 3 (node 1, local rank 1) failed with exit code 1"):]
    assert failure.startswith(
        "global rank 3 (node 1, local rank 1) failed with exit code 1: ValueError: bad batch on rank 3"
    ), failure[:2000]
    traceback_text = failure[: failure.index("Per-rank logs of this node")]
    assert 'raise_rank.py", line' in traceback_text and "in check_batch" in traceback_text
    assert "worker_bootstrap" not in traceback_text and "runpy" not in traceback_text
    # node 0 says which node and rank failed first
    assert (
        "node 1 failed first: global rank 3 (local rank 1) exited with code 1: "
        "ValueError: bad batch on rank 3" in out
    ), out[-4000:]
    assert flows.live_processes() == []


def test_five_megabytes_on_stderr_alone(flows):
    lines = 50_000  # about 5 MB with the line text of flood_stderr.py
    run = flows.run(
        "two_nodes.py", "--script", "flood_stderr.py", "--script_args", json.dumps({"lines": lines}),
        "--nproc", "1",
    )
    assert run.returncode == 0, run.output[-6000:]
    task_lines = run.task_lines("train")
    for rank in (0, 1):
        prefix = f"[rank{rank}]: "
        flood = [line for line in task_lines if line.startswith(prefix + "flood ")]
        assert [int(line.split()[3]) for line in flood] == list(range(lines))  # all, in order
        assert sum(len(line) - len(prefix) + 1 for line in flood) >= 5_000_000
        assert f"{prefix}stdout after the flood of rank {rank}" in task_lines
        # drained before run() returned: the step's own stderr line comes after every flood line
        stderr_returned = task_lines.index(f"RUN RETURNED node={rank} call=1")
        assert task_lines.index(flood[-1]) < stderr_returned
    assert flows.live_processes() == []
