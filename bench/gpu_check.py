"""The GPU path: NCCL through @torchrun, on a GPU machine's own torch.

    python3 -m bench.gpu_check [--report FILE]

from the repository root, with Metaflow and this package importable (on a machine
without a package registry, carry their wheels: docs/gpu.md). Without a GPU the same
checks run with gloo on the CPU: the script's dry run.

Each check is a local Metaflow run in a directory of its own, timed from start to
end, then checked for processes left behind:

- default workers: ``bench/gpu/flow.py``, ``@resources(gpu=<the machine's GPUs>)``
  and ``nproc_per_node`` left to its default: one worker per GPU, each on its own
  device, NCCL;
- hello: ``examples/hello`` on 1 node x 1 process;
- torch-ddp: ``examples/torch-ddp`` on 1 node, its default workers, 2 epochs;
- raise in a collective: a rank's all_reduce of a tensor of a type the backend
  cannot reduce raises inside the collective; the run fails naming the rank and error;
- no destroy_process_group: a program that leaves its process group ends cleanly
  and in time.

NCCL refuses two ranks on one GPU, so one GPU is one NCCL rank: on a machine with
one GPU every check runs a world of one, and no collective crosses ranks or nodes.
Prints a Markdown report (also written to ``--report``); exits 1 if a check failed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence

from tests.harness.processes import MARKER_VAR, kill_processes, processes_with_marker

ROOT = Path(__file__).resolve().parent.parent
CHECK_FLOW = ROOT / "bench" / "gpu" / "flow.py"
RUN_TIMEOUT_SECONDS = 300
LEFT_BEHIND_GRACE_SECONDS = 10
_RANK_LINE = re.compile(r"GPU CHECK rank=(\d+) local_rank=(\d+) world=(\d+) backend=(\w+) "
                        r"device=(\S+)")


class Check(NamedTuple):
    """One local run: ``argv`` after ``python``, ``env`` over the run's, what must hold."""

    name: str
    argv: List[str]
    env: Dict[str, str]
    succeeds: bool
    must_show: List[str]


class Outcome(NamedTuple):
    name: str
    passed: bool
    seconds: float
    detail: str


def machine() -> Dict[str, str]:
    """What the checks run on: torch, CUDA, NCCL and the GPUs."""
    import torch

    found = {"torch": torch.__version__, "CUDA": str(torch.version.cuda),
             "GPUs": str(torch.cuda.device_count())}
    if torch.cuda.is_available():
        found["NCCL"] = ".".join(map(str, torch.cuda.nccl.version()))
        found["GPU names"] = ", ".join(sorted({torch.cuda.get_device_name(index) for index
                                               in range(torch.cuda.device_count())}))
    return found


def checks(gpus: int) -> List[Check]:
    backend, device = ("nccl", "cuda") if gpus else ("gloo", "cpu")
    workers = max(1, gpus)
    flow = [str(CHECK_FLOW), "run", "--mode"]
    gpu_env = {"GPU_CHECK_GPUS": str(gpus)}
    return [
        Check("default workers", flow + ["report"], gpu_env, True,
              [f"world={workers} backend={backend} device={device}"]
              + [f"GPU CHECK rank={rank} local_rank={rank}" for rank in range(workers)]),
        Check("hello", [str(ROOT / "examples" / "hello" / "flow.py"), "run", "--num_parallel",
                        "1", "--nproc_per_node", "1"], {}, True,
              [f"hello from rank 0 of 1 (node 0, local rank 0, {device}): 1 processes answered"]),
        Check("torch-ddp", [str(ROOT / "examples" / "torch-ddp" / "flow.py"), "run",
                            "--num_parallel", "1", "--epochs", "2"], {}, True,
              ["epoch 1 loss", "final loss"]),
        Check("raise in a collective", flow + ["raise-in-collective"], gpu_env, False,
              ["failed first: global rank 0 (local rank 0) exited with code 1: "
               "RuntimeError"]),
        Check("no destroy_process_group", flow + ["no-destroy"], gpu_env, True,
              ["GPU CHECK RESULT exit_code=0"]),
    ]


def run_check(check: Check, workdir: Path) -> Outcome:
    """Run ``check`` in ``workdir``: its own Metaflow home and datastore, a marker to find
    what it leaves behind."""
    marker = f"gpu-check-{os.getpid()}-{workdir.name}"
    env = dict(os.environ)
    env.update(
        METAFLOW_HOME=str(workdir / "home"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(workdir / "datastore"),
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        TMPDIR=str(workdir),
        **{MARKER_VAR: marker},
        **check.env,
    )
    if env.get("USER", "root") == "root" and not env.get("METAFLOW_USER"):
        env["METAFLOW_USER"] = "gpu-check"  # Metaflow refuses root as a user name
    started = time.monotonic()
    try:
        run = subprocess.run([sys.executable, *check.argv], cwd=workdir, env=env,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
        output, code = run.stdout + run.stderr, run.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = f"{expired.stdout or ''}{expired.stderr or ''}", None
    seconds = time.monotonic() - started
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_SECONDS
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_with_marker(marker)
    kill_processes(left)
    (workdir / "output.log").write_text(output)
    problems = []
    if code is None:
        problems.append(f"still running after {RUN_TIMEOUT_SECONDS} s")
    elif (code == 0) != check.succeeds:
        problems.append(f"exit code {code}")
    problems += [f"no {text!r}" for text in check.must_show if text not in output]
    if left:
        problems.append(f"{len(left)} processes left behind")
    detail = "; ".join(problems) if problems else _evidence(output, check)
    return Outcome(check.name, not problems, seconds, detail)


def _evidence(output: str, check: Check) -> str:
    """The line of the output that shows the check passed."""
    for line in output.splitlines():
        if any(text in line for text in check.must_show):
            return line.split("] ", 1)[-1].strip()[:160]
    return ""


def report(found: Dict[str, str], outcomes: Sequence[Outcome]) -> str:
    lines = ["Machine: " + ", ".join(f"{key} {value}" for key, value in found.items()), "",
             "| check | result | seconds | shown |", "|---|---|---|---|"]
    for outcome in outcomes:
        detail = outcome.detail.replace("|", "\\|")
        lines.append(f"| {outcome.name} | {'pass' if outcome.passed else 'FAIL'} | "
                     f"{outcome.seconds:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="also write the report here")
    args = parser.parse_args()
    found = machine()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for number, check in enumerate(checks(int(found["GPUs"]))):
            workdir = Path(scratch) / f"check{number}"
            workdir.mkdir()
            outcome = run_check(check, workdir)
            outcomes.append(outcome)
            print(f"{outcome.name}: {'pass' if outcome.passed else 'FAIL'} "
                  f"({outcome.seconds:.1f} s) {outcome.detail}", flush=True)
            if not outcome.passed:
                print((workdir / "output.log").read_text()[-3000:], flush=True)
    text = report(found, outcomes)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0 if all(outcome.passed for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
