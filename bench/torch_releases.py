"""The compatibility run: named checks of this package on each torch release, one after another.

For each release given, in a directory of its own under ``--workdir`` (the
system's temp directory by default): a fresh virtual environment of this
interpreter's base Python with ``torch==<release>`` (with its CUDA packages
where the registry has no CPU wheel: about 5 GB), then a regular (not
editable) install of this package, built from a copy of its files (see
``tests.harness.venvs.package_files``), with the Metaflow this interpreter has
and the test tools; then the checks of ``CHECKS`` from a copy of ``tests/`` and
``bench/``, whose own ``rendezvous`` and ``metaflow_extensions`` are not on the
path, so every check runs the installed package. The directory is deleted
before the next release. A release whose install brings another torch than
asked (the package's requirement does not admit it) fails its install and runs
no check.

Prints one line per check as it ends, then a Markdown table (release x check,
pass or FAIL with the seconds it took). Run from the repository root::

    python -m bench.torch_releases 2.6.0 2.9.1 2.11.0 2.13.0 2.14.1 2.15.0

(``make compat TORCH="..."``). pip's own configuration applies to every
install: a constraint that caps torch must be lifted for the run
(``PIP_CONSTRAINT=/dev/null``). Exits 1 when a check failed.

``python -m bench.torch_releases --clean-exit RUNS`` is one of the checks, run
inside a release's environment: a script that never calls
``destroy_process_group()`` through ``current.torch.run`` (``exit_aborts/``),
``RUNS`` times; it fails on the first run that does not end cleanly.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tests.harness.venvs import REPO, package_files

# The test tools the checks need, and nothing that brings a torch of its own.
TEST_REQUIREMENTS = ("pytest", "pytest-timeout", "hypothesis", "numpy")
INSTALL_TIMEOUT_SECONDS = 1800
CHECK_TIMEOUT_SECONDS = 900
CLEAN_EXIT_RUNS = 3
_BACKEND = "tests/integration/test_backend_under_torchrun.py"
_FLOWS = "tests/integration/test_flows.py"


@dataclass(frozen=True)
class Check:
    """One named check: a command run with the release's Python in the copy of the tests."""

    name: str
    what: str  # what it checks, in the legend under the table
    args: Sequence[str]


def _pytest(*node_ids: str) -> List[str]:
    return ["-m", "pytest", "-q", "-p", "no:cacheprovider", *node_ids]


CHECKS = (
    Check("round + restart", "a 2 x 2 all_reduce under torchrun and `python -m rendezvous`; a "
          "rank failing once under --max-restarts=1; one restart count for the job on every "
          "node of a flow",
          _pytest(f"{_BACKEND}::test_two_nodes_two_processes_all_reduce",
                  f"{_BACKEND}::test_worker_failing_once_recovers_with_max_restarts",
                  f"{_FLOWS}::test_one_restart_count_for_the_job_on_every_node")),
    Check("failing rank named", "a raising rank named on every node, under torchrun (either node "
          "failing) and in a flow, with its traceback",
          _pytest(f"{_BACKEND}::test_rank_raising_stops_idle_node",
                  f"{_BACKEND}::test_control_rank_raising_stops_worker_node",
                  f"{_FLOWS}::test_raising_rank_is_named_with_its_traceback")),
    Check("function entrypoints", "a 2 x 2 flow of function entrypoints: return values, "
          "arguments, a failing rank, a restart",
          _pytest("tests/integration/test_function_entrypoints.py::"
                  "test_function_entrypoints_on_two_nodes")),
    Check("card", "the card live while the ranks run, then every rank done",
          _pytest("tests/integration/test_cards.py::"
                  "test_card_is_live_while_ranks_run_then_shows_every_rank_done")),
    Check("hang named", "a 2 x 2 flow in which one rank holds the others up (asleep, on a lock, "
          "in a regex holding the GIL, waiting for a data loader, skipping a collective): "
          "the culprit named on every node from the ranks' flight recorders; on a torch whose "
          "recorder takes no gloo collective (before 2.8), every node saying diagnosis is off",
          _pytest("tests/integration/test_hangs.py::"
                  "test_a_hung_job_names_its_culprit_on_every_node",
                  "tests/integration/test_hangs.py::"
                  "test_a_torch_that_records_no_gloo_collective_says_diagnosis_is_off")),
    Check("clean exit", f"a 2 x 2 script that never calls destroy_process_group(), "
          f"{CLEAN_EXIT_RUNS} runs, every one ending with code 0",
          ["-m", "bench.torch_releases", "--clean-exit", str(CLEAN_EXIT_RUNS)]),
)


@dataclass
class Outcome:
    passed: bool
    seconds: float
    output: str = ""

    def cell(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'} {self.seconds:.0f} s"


class ReleaseRun:
    """One release's directory: its environment, the copy of the tests, the checks' outcomes."""

    def __init__(self, release: str, workdir: Optional[str]):
        self.release = release
        self.root = Path(tempfile.mkdtemp(prefix=f"torch-{release}-", dir=workdir))
        self.venv = self.root / "venv"
        self.python = self.venv / "bin" / "python"
        self.checkout = self.root / "checkout"

    def __enter__(self) -> "ReleaseRun":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def install(self) -> Outcome:
        """The environment and the package; fails when torch is not ``release`` afterwards."""
        started = time.monotonic()
        source = self.root / "metaflow-torchrun"
        for path in package_files():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / path, source / path)
        steps = [
            [sys.executable, "-m", "venv", str(self.venv)],
            # torch first and alone, as users whose image holds it: then the package's
            # requirements must accept it rather than replace it.
            [str(self.python), "-m", "pip", "install", "--no-cache-dir", "--quiet",
             f"torch=={self.release}"],
            [str(self.python), "-m", "pip", "install", "--no-cache-dir", "--quiet", str(source),
             f"metaflow=={metadata.version('metaflow')}", *TEST_REQUIREMENTS],
            [str(self.python), "-c", "import torch; print(torch.__version__)"],
        ]
        output = ""
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT_SECONDS)
            output = done.stdout + done.stderr
            if done.returncode != 0:
                return Outcome(False, time.monotonic() - started, output)
        installed = output.strip()
        if installed.split("+")[0] != self.release:
            return Outcome(False, time.monotonic() - started,
                           f"asked for torch {self.release}, got {installed}")
        for folder in ("tests", "bench"):
            shutil.copytree(REPO / folder, self.checkout / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
        return Outcome(True, time.monotonic() - started, installed)

    def check(self, check: Check) -> Outcome:
        started = time.monotonic()
        try:
            done = subprocess.run([str(self.python), *check.args], cwd=self.checkout,
                                  capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECONDS)
            passed, output = done.returncode == 0, done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            passed, output = False, f"still running after {expired.timeout} s"
        return Outcome(passed, time.monotonic() - started, output)


def run_release(release: str, workdir: Optional[str],
                checks: Sequence[Check] = CHECKS) -> Dict[str, Outcome]:
    """Install ``release`` and run ``checks`` on it; outcomes by column name."""
    outcomes: Dict[str, Outcome] = {}
    with ReleaseRun(release, workdir) as run:
        outcomes["install"] = install = run.install()
        _report(release, "install", install)
        if not install.passed:
            return outcomes
        for check in checks:
            outcomes[check.name] = outcome = run.check(check)
            _report(release, check.name, outcome)
    return outcomes


def _report(release: str, name: str, outcome: Outcome) -> None:
    print(f"torch {release}: {name}: {outcome.cell()}", flush=True)
    if not outcome.passed:
        print(outcome.output[-6000:], flush=True)


def table(results: Dict[str, Dict[str, Outcome]]) -> str:
    """The Markdown table (one row per release, the install then one column per check), then
    what each check is."""
    columns = ["install", *(check.name for check in CHECKS)]
    lines = ["| torch | " + " | ".join(columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for release, outcomes in results.items():
        cells = [outcomes[column].cell() if column in outcomes else "not run" for column in columns]
        lines.append(f"| {release} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {check.name}: {check.what}." for check in CHECKS]
    return "\n".join(lines)


def clean_exit(runs: int) -> int:
    """The ``clean exit`` check, inside a release's environment: 0 when every run ended cleanly."""
    from bench.exit_aborts import run_flow

    with tempfile.TemporaryDirectory(prefix="clean-exit-") as root:
        for repetition in range(runs):
            result = run_flow(Path(root), repetition)
            print(f"run {repetition + 1}: {result}", flush=True)
            if result != "ok":
                return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("releases", nargs="*", metavar="RELEASE", help="torch versions, e.g. 2.6.0")
    parser.add_argument("--workdir", help="where each release's directory is made (default: temp)")
    parser.add_argument("--checks", help="the checks to run, by name, comma-separated "
                        "(default: all)")
    parser.add_argument("--clean-exit", type=int, metavar="RUNS",
                        help="run the clean-exit check here, RUNS times, and nothing else")
    args = parser.parse_args()
    if args.clean_exit is not None:
        sys.exit(clean_exit(args.clean_exit))
    if not args.releases:
        parser.error("name at least one torch release")
    names = {check.name for check in CHECKS}
    wanted = names if args.checks is None else set(args.checks.split(","))
    if wanted - names:
        parser.error(f"unknown checks {sorted(wanted - names)}; known: {sorted(names)}")
    checks = [check for check in CHECKS if check.name in wanted]
    results = {release: run_release(release, args.workdir, checks) for release in args.releases}
    print()
    print(table(results))
    failed = any(not outcome.passed
                 for outcomes in results.values() for outcome in outcomes.values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
