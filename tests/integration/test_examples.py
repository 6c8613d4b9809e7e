"""Every example of examples/ end to end, as a new user runs it: from a regular install.

Each example runs with the Python of a user's install (``tests.harness.venvs``): a
fresh virtual environment holding ``torch==2.13.0``, a regular (not editable)
``pip install`` of this repository and the packages the examples' READMEs ask
for beside it, and nothing else. One environment holds what every README asks
for; each README lists its own. That environment's ``bin`` is not on PATH (it
was never activated) and no PYTHONPATH points into the repository. The runs
keep the runner's ``OMP_NUM_THREADS=1``, which spares the shared cores, but for
the tests of quiet output (``hello`` is ``make demo``), which leave it unset as a
user's shell does: that is when torchrun would print its banner.

Each example runs from a copy of its folder in the test's directory, which
shows that it needs nothing beside its folder; running it from the test's
directory, not from the folder, that it does not depend on the working
directory. The local nodes of a run share one machine, so on a machine with
GPUs they would share its GPUs, which NCCL refuses: the runs hide the GPUs and
use gloo.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from tests.harness.flow_runs import REPO, FlowRun, run_to_end
from tests.harness.venvs import users_install

EXAMPLES = REPO / "examples"
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}
# A shell's PATH without the user's virtualenv on it; no `python` here is the venv's.
USERS_PATH = os.pathsep.join(["/usr/bin", "/bin"])
# The line of every example README that says what to install: the package, then the example's own needs.
_INSTALL_LINE = re.compile(r"^pip install \.\./\.\.((?: +[^\s#]+)*) *(?:#.*)?$", re.MULTILINE)
# What torch prints about how torchrun was started, and about a missing numpy: of these,
# only the last can be about the program, from its own `import torch`.
LAUNCHER_NOISE = ("Setting OMP_NUM_THREADS", "master_addr is only used", "Failed to initialize NumPy")

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)


def declared_needs(example: str) -> List[str]:
    """The packages the example's README says to install beside this repository (``../..``)."""
    readme = (EXAMPLES / example / "README.md").read_text(encoding="utf-8")
    lines = _INSTALL_LINE.findall(readme)
    assert len(lines) == 1, f"{example}/README.md needs exactly one line 'pip install ../.. ...'"
    return lines[0].split()


@pytest.fixture(scope="session")
def users_python() -> Iterator[Path]:
    """The Python of a user's install holding every example's declared needs (built on first use)."""
    examples = sorted(folder.name for folder in EXAMPLES.iterdir() if folder.is_dir())
    needs = [need for example in examples for need in declared_needs(example)]
    with users_install(needs) as python:
        yield python


def copy_example(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES / name, tmp_path / name,
                                ignore=shutil.ignore_patterns("__pycache__")))


def users_environment(flows, env: Optional[Dict[str, Optional[str]]] = None) -> Dict[str, str]:
    """The runner's isolated Metaflow settings in a user's shell (see the module), updated
    with ``env``, where None unsets a variable."""
    base = {key: value for key, value in flows.env.items()
            if key not in ("PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    merged = {**base, "PATH": USERS_PATH, **CPU_ONLY, **(env or {})}
    return {key: value for key, value in merged.items() if value is not None}


def run_as_user(flows, python: Path, *argv: str, env=None, timeout: float = 200) -> FlowRun:
    """``python argv`` in the runner's directory; fails the test unless it succeeded."""
    process = subprocess.Popen(
        [str(python), *argv], cwd=flows.root, env=users_environment(flows, env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    run = run_to_end(process, timeout, " ".join(argv), flows.kill_all)
    assert run.returncode == 0, run.output[-6000:]
    return run


def run_example(flows, python: Path, folder: Path, *args: str, env=None) -> FlowRun:
    """``python <folder>/flow.py run args``; fails the test unless the run succeeded."""
    return run_as_user(flows, python, str(folder / "flow.py"), "run", *args, env=env)


def noise(run: FlowRun) -> List[str]:
    """The lines of ``run`` that come from how torch was launched, not from the program."""
    return [line for line in run.output.splitlines() if any(text in line for text in LAUNCHER_NOISE)]


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


def test_the_users_install_is_a_regular_one_off_path(users_python):
    found = subprocess.run(
        [str(users_python), "-c", "import rendezvous, torch; print(rendezvous.__file__, torch.__version__)"],
        cwd=users_python.parent, env={"PATH": USERS_PATH}, capture_output=True, text=True, check=True,
    ).stdout.split()
    venv = users_python.parent.parent
    assert Path(found[0]).is_relative_to(venv / "lib"), found  # installed, not the repository's
    assert found[1].startswith("2.13.0"), found
    site_packages = Path(found[0]).parent.parent
    # an editable install leaves a .pth file (or an .egg-link) that leads to the repository
    leads_to_repo = [path.name for path in site_packages.glob("*.pth") if str(EXAMPLES.parent) in path.read_text()]
    assert leads_to_repo == [] and not list(site_packages.glob("*.egg-link")), leads_to_repo
    python_on_path = shutil.which("python", path=USERS_PATH)
    assert python_on_path is None or not Path(python_on_path).is_relative_to(venv), python_on_path


def test_hello(flows, tmp_path, users_python):
    run = run_example(flows, users_python, copy_example("hello", tmp_path), env={"OMP_NUM_THREADS": None})
    lines = run.task_lines("hello")
    for rank in range(4):
        assert (
            f"[rank{rank}]: hello from rank {rank} of 4 (node {rank // 2}, local rank {rank % 2}, cpu): "
            f"4 processes answered" in lines
        ), lines
    # `make demo`: the program's lines and Metaflow's own, nothing from how torchrun was started
    others = [line for line in lines if not re.fullmatch(r"\[rank\d\]: hello from rank .*", line)]
    assert others == ["Task is starting.", "Task finished successfully."], lines
    assert "all nodes said hello" in run.task_lines("end")
    assert flows.live_processes() == []


def test_tensor_pass(flows, tmp_path, users_python):
    run = run_example(flows, users_python, copy_example("tensor-pass", tmp_path), "--size", "5")
    lines = run.task_lines("pass_tensor")
    sent = "[0.5, 1.5, 4.5, 9.5, 16.5]"  # i ** 2 + 0.5
    assert f"[rank0]: rank 0 sent {sent} to 3 other ranks" in lines, lines
    for rank in (1, 2, 3):
        assert f"[rank{rank}]: rank {rank} received {sent} from rank 0: as expected" in lines
    assert "[rank0]: 4 of 4 ranks hold the tensor" in lines
    assert flows.live_processes() == []


def test_torch_ddp_loss_goes_down_and_a_rerun_resumes_from_the_snapshot(flows, tmp_path, users_python):
    folder = copy_example("torch-ddp", tmp_path)
    epoch_loss = r"\[rank0\]: epoch (\d+) loss (\S+)"
    first = run_example(flows, users_python, folder, "--epochs", "3")
    first_lines = first.task_lines("train")
    losses = values(epoch_loss, first_lines)
    assert list(losses) == [0, 1, 2], first_lines
    assert losses[2] < losses[0] / 4, losses
    assert not any("resuming" in line for line in first_lines)
    assert any(re.fullmatch(r"snapshot after 3 epochs: \d+ bytes", line) for line in first.task_lines("end"))
    # rank 0's return value, kept as an artifact: the last epoch's loss, as rank 0 printed it
    assert f"final loss {losses[2]:.4f}" in first.task_lines("end"), first.task_lines("end")

    second = run_example(flows, users_python, folder, "--epochs", "2")
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


def test_min_gpt_loss_goes_down(flows, tmp_path, users_python):
    folder = copy_example("min-gpt", tmp_path)
    run = run_example(flows, users_python, folder)
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
    "launcher, module",
    [("auto", "torch.distributed.run"), ("module", "rendezvous")],
    ids=["torchrun through the entry point", "python -m rendezvous"],
)
def test_custom_script(flows, tmp_path, users_python, launcher, module):
    folder = copy_example("custom-script", tmp_path)
    run = run_example(flows, users_python, folder, "--launcher", launcher)
    output = printed(run, "train")
    rdzv_ids = set()
    for node in (0, 1):
        launch = re.search(
            rf"node {node} runs: {re.escape(f'{users_python} -m {module}')} --nnodes=2 --nproc-per-node=1 "
            rf"--rdzv-backend=metaflow --rdzv-id=(\d+-\d+) {re.escape(str(folder / 'allreduce.py'))}",
            output,
        )
        assert launch, output
        rdzv_ids.add(launch[1])
        assert f"rank {node} of 2 on node {node}: sum 3" in output
    assert len(rdzv_ids) == 1  # run id and control task id: the same on both nodes
    if module == "rendezvous":
        assert noise(run) == [], noise(run)
    assert flows.live_processes() == []


def test_plain_torchrun_without_numpy_only_the_programs_warn(flows, tmp_path, users_python):
    # plain-torchrun asks for no numpy: hide the one the shared environment holds
    hidden = tmp_path / "numpy-hidden" / "numpy"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n")
    folder = copy_example("plain-torchrun", tmp_path)
    run = run_as_user(flows, users_python, str(folder / "launch_local.py"),
                      env={"PYTHONPATH": str(hidden.parent), "OMP_NUM_THREADS": None})
    lines = run.output.splitlines()
    for rank in range(4):
        assert f"[rank {rank}]: hello from rank {rank} of 4 on node {rank // 2}: sum of ranks = 6 (expected 6)" in lines
    assert lines[-1] == "node exit codes: [0, 0]", lines
    # Each worker's `import torch` warns (the program's own environment lacks numpy);
    # the agents' imports do not, nor does torchrun about how it was started.
    warned = noise(run)
    assert sorted(line.split("]")[0] for line in warned) == [f"[rank {rank}" for rank in range(4)], warned
    assert all("Failed to initialize NumPy: No module named 'numpy'" in line for line in warned), warned
    assert flows.live_processes() == []


def test_restarts(flows, tmp_path, users_python):
    run = run_example(flows, users_python, copy_example("restarts", tmp_path))
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
