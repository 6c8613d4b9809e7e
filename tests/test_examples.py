"""Every example of examples/ end to end, each from a copy of its folder in the test's directory.

Running the copy shows that an example needs nothing beside its folder; running
it from the test's directory, not from the folder, that it does not depend on
the working directory. The local nodes of a run share one machine, so on a
machine with GPUs they would share its GPUs, which NCCL refuses: the runs hide
the GPUs and use gloo.
"""

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)


def copy_example(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES / name, tmp_path / name,
                                ignore=shutil.ignore_patterns("__pycache__")))


def run_example(flows, folder: Path, *args: str, env=None):
    """``python <folder>/flow.py run args``; fails the test unless the run succeeded."""
    # an absolute path: the runner joins it to tests/flows, which leaves it as it is
    run = flows.run(str(folder / "flow.py"), *args, env={**CPU_ONLY, **(env or {})})
    assert run.returncode == 0, run.output[-6000:]
    return run


def printed(run, step: str) -> str:
    """What the tasks of ``step`` printed, for lines that several nodes print at once.

    The local nodes of a run share one output stream, and Metaflow runs tasks with
    PYTHONUNBUFFERED set, so print() writes a line's text and its end separately:
    lines of two nodes can run together. (@torchrun writes worker lines whole.)
    """
    return "\n".join(run.task_lines(step))


def values(pattern: str, lines: List[str]) -> Dict[int, float]:
    """``{n: x}`` from the lines that match ``pattern`` in full, with groups n and x."""
    found = {}
    for line in lines:
        match = re.fullmatch(pattern, line)
        if match:
            found[int(match[1])] = float(match[2])
    return found


def test_hello(flows, tmp_path):
    run = run_example(flows, copy_example("hello", tmp_path))
    lines = run.task_lines("hello")
    for rank in range(4):
        assert (
            f"[rank{rank}]: hello from rank {rank} of 4 (node {rank // 2}, local rank {rank % 2}, cpu): "
            f"4 processes answered" in lines
        ), lines
    assert "all nodes said hello" in run.task_lines("end")
    assert flows.live_processes() == []


def test_tensor_pass(flows, tmp_path):
    run = run_example(flows, copy_example("tensor-pass", tmp_path), "--size", "5")
    lines = run.task_lines("pass_tensor")
    sent = "[0.5, 1.5, 4.5, 9.5, 16.5]"  # i ** 2 + 0.5
    assert f"[rank0]: rank 0 sent {sent} to 3 other ranks" in lines, lines
    for rank in (1, 2, 3):
        assert f"[rank{rank}]: rank {rank} received {sent} from rank 0: as expected" in lines
    assert "[rank0]: 4 of 4 ranks hold the tensor" in lines
    assert flows.live_processes() == []


def test_torch_ddp_loss_goes_down_and_a_rerun_resumes_from_the_snapshot(flows, tmp_path):
    folder = copy_example("torch-ddp", tmp_path)
    epoch_loss = r"\[rank0\]: epoch (\d+) loss (\S+)"
    first = run_example(flows, folder, "--epochs", "3")
    first_lines = first.task_lines("train")
    losses = values(epoch_loss, first_lines)
    assert list(losses) == [0, 1, 2], first_lines
    assert losses[2] < losses[0] / 4, losses
    assert not any("resuming" in line for line in first_lines)
    assert any(re.fullmatch(r"snapshot after 3 epochs: \d+ bytes", line) for line in first.task_lines("end"))

    second = run_example(flows, folder, "--epochs", "2")
    assert any(
        re.fullmatch(r"continuing TorchDDPFlow/\d+, 3 epochs done", line) for line in second.task_lines("start")
    ), second.task_lines("start")
    second_lines = second.task_lines("train")
    assert "[rank0]: resuming from the snapshot taken after 3 epochs" in second_lines
    resumed = values(epoch_loss, second_lines)
    assert list(resumed) == [3, 4], second_lines
    # the model kept training: below where the first run stopped, not back at a fresh model's loss
    assert resumed[4] < losses[2], (losses, resumed)
    assert any(re.fullmatch(r"snapshot after 5 epochs: \d+ bytes", line) for line in second.task_lines("end"))
    assert flows.live_processes() == []


def test_min_gpt_loss_goes_down(flows, tmp_path):
    folder = copy_example("min-gpt", tmp_path)
    run = run_example(flows, folder)
    lines = run.task_lines("train")
    text = (folder / "input.txt").read_text(encoding="utf-8")
    assert (
        f"[rank0]: 63072 parameters; text of {len(text)} characters, {len(set(text))} distinct; 2 processes"
        in lines
    ), lines
    losses = values(r"\[rank0\]: step (\d+) val loss (\S+)", lines)
    assert list(losses) == [0, 50, 100, 150], lines
    assert losses[0] > losses[50] > losses[100] > losses[150], losses
    assert losses[150] < 0.6 * losses[0], losses
    sample = lines[lines.index("[rank0]: sample:") + 1:]
    assert sum(len(line) for line in sample if line.startswith("[rank0]: > ")) > 100, sample
    assert flows.live_processes() == []


@pytest.mark.parametrize(
    "launcher, command",
    [("auto", "torchrun"), ("module", f"{sys.executable} -m rendezvous")],
    ids=["torchrun through the entry point", "python -m rendezvous"],
)
def test_custom_script(flows, tmp_path, launcher, command):
    # Metaflow's own local @parallel launcher starts the other nodes with the
    # `python` found on PATH, and the step finds `torchrun` there.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    folder = copy_example("custom-script", tmp_path)
    run = run_example(flows, folder, "--launcher", launcher, env={"PATH": path})
    output = printed(run, "train")
    rdzv_ids = set()
    for node in (0, 1):
        launch = re.search(
            rf"node {node} runs: {re.escape(command)} --nnodes=2 --nproc-per-node=1 --rdzv-backend=metaflow "
            rf"--rdzv-id=(\d+-\d+) {re.escape(str(folder / 'allreduce.py'))}",
            output,
        )
        assert launch, output
        rdzv_ids.add(launch[1])
        assert f"rank {node} of 2 on node {node}: sum 3" in output
    assert len(rdzv_ids) == 1  # run id and control task id: the same on both nodes
    assert flows.live_processes() == []


def test_restarts(flows, tmp_path):
    run = run_example(flows, copy_example("restarts", tmp_path))
    lines = run.task_lines("work")
    assert "[rank1]: RuntimeError: rank 1 fails at step 5 (planned, first run only)" in lines
    # Rank 0 started twice: from scratch, then from its checkpoint after the failure.
    # Rank 1 failed after the all_reduce of step 4, which rank 0 entered after saving
    # step 3; rank 0 saves step 4 at once, but the restart may stop it first.
    starts = [line for line in lines if line.startswith("[rank0]: starting at step")]
    assert starts[0] == "[rank0]: starting at step 0 of 10", starts
    assert starts[1:] in (["[rank0]: starting at step 5 of 10"], ["[rank0]: starting at step 4 of 10"]), starts
    assert "[rank0]: total 30 after 10 steps (expected 30)" in lines
    # node 1's rank failed; node 0 counts a restart too when its rank saw the peer go first
    end = run.task_lines("end")
    assert (
        "the job succeeded; restarts by node: {0: 0, 1: 1}" in end
        or "the job succeeded; restarts by node: {0: 1, 1: 1}" in end
    ), end
    assert flows.live_processes() == []
