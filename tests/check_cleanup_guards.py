"""Check that each no-orphan test guards the clean-up it covers.

A test that still passes with the clean-up it is about removed proves nothing about
it (the signal it sends may reach every process anyway). For each of our clean-ups,
this removes it from the sources, runs the tests that cover it, and expects each of
them to fail; then it puts the source back. It prints one line per clean-up and
exits non-zero if a test passed without its clean-up.

    python -m tests.check_cleanup_guards [--baseline]

``--baseline`` first runs every covering test on the sources as they are (all must
pass). It edits the package's sources in place, so run it in a clone of the
repository with its own venv (``make test`` there once); it refuses to start when
a file it edits differs from git's HEAD. Not part of the suite: it runs each
covering test once per clean-up (about 5 minutes on 2 cores).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "metaflow_extensions/torchrun/plugins/"
FLOWS_TESTS = "tests/integration/test_flows.py::"
DECORATORS_TESTS = "tests/integration/test_metaflow_decorators.py::"
TEST_TIMEOUT_SECONDS = 600


class Edit(NamedTuple):
    """``text`` in ``path`` (once), and what stands in for it."""

    path: str
    text: str
    removed: str


class Cleanup(NamedTuple):
    """One clean-up: ``edits`` remove it, and each of ``tests`` must fail without it."""

    name: str
    edits: List[Edit]
    tests: List[str]


LOCAL_TASK_TIE = Edit(PLUGINS + "decorator.py", "            die_with_parent(signal.SIGTERM)\n",
                      "            pass\n")
CLEANUPS = [
    Cleanup("a local task dies with Metaflow's runtime", [LOCAL_TASK_TIE],
            [FLOWS_TESTS + "test_stopped_run_leaves_no_process[kill PID: SIGTERM to the flow "
                           "process alone]"]),
    # A local node's task is tied to node 0's twice: from its start (this edit), and by
    # the tie every local task makes once it runs (LOCAL_TASK_TIE), which alone keeps the
    # tests green. The first covers only the second before the second: no test can time a
    # death into it, so the two are removed together. Only a node outside torchrun needs
    # them: one in a job fails by itself once node 0's store is gone (the backend).
    Cleanup("a local node's task dies with node 0's",
            [Edit(PLUGINS + "launch/local_nodes.py",
                  "preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, os.getpid()),",
                  "preexec_fn=None,"),
             LOCAL_TASK_TIE],
            [FLOWS_TESTS + "test_killed_control_task_takes_every_node_down"]),
    Cleanup("the torchrun agent dies with its task",
            [Edit(PLUGINS + "launch/launcher.py",
                  "preexec_fn=functools.partial(\n"
                  "                bootstrap.die_with_parent, signal.SIGTERM, os.getpid()\n"
                  "            ),",
                  "preexec_fn=None,")],
            [FLOWS_TESTS + "test_killed_control_task_takes_every_node_down",
             FLOWS_TESTS + "test_interrupted_runner_program_leaves_no_process"]),
    Cleanup("an interrupted task stops its agent",
            [Edit(PLUGINS + "launch/launcher.py",
                  "                _say_why_stopped(stop_reason_path, sys.exc_info()[1])\n"
                  "                _stop(agent)\n",
                  "                _say_why_stopped(stop_reason_path, sys.exc_info()[1])\n")],
            [DECORATORS_TESTS + "test_timeout_stops_the_whole_job_and_says_so"]),
    Cleanup("a worker dies with its agent",
            [Edit(PLUGINS + "worker/bootstrap.py", "    die_with_parent(signal.SIGKILL)\n",
                  "    pass\n")],
            [FLOWS_TESTS + "test_killed_agent_takes_its_workers_and_the_other_node_down",
             FLOWS_TESTS + "test_stopped_run_leaves_no_process[Ctrl-C: SIGINT to the process "
                           "group, ranks deaf to it]"]),
    Cleanup("the card's relay dies with its task",
            [Edit(PLUGINS + "card/exchange.py",
                  "preexec_fn=functools.partial(\n"
                  "                    die_with_parent, signal.SIGKILL, os.getpid()\n"
                  "                ),",
                  "preexec_fn=None,")],
            [FLOWS_TESTS + "test_stopped_run_leaves_no_process[SIGTERM to the process group, "
                           "with the card's relays]"]),
]


def run_test(test: str) -> int:
    """pytest's exit code for one test: 0 passed, 1 failed."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=TEST_TIMEOUT_SECONDS,
    ).returncode


def check(cleanup: Cleanup) -> List[str]:
    """Remove ``cleanup``, run its tests; the tests that did not fail."""
    originals = {edit.path: (ROOT / edit.path).read_text() for edit in cleanup.edits}
    edited = dict(originals)
    for edit in cleanup.edits:
        if edited[edit.path].count(edit.text) != 1:
            raise SystemExit(f"{edit.path} no longer holds {cleanup.name!r} once: update CLEANUPS")
        edited[edit.path] = edited[edit.path].replace(edit.text, edit.removed)
    try:
        for path, text in edited.items():
            (ROOT / path).write_text(text)
        return [test for test in cleanup.tests if run_test(test) != 1]
    finally:
        for path, text in originals.items():
            (ROOT / path).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true",
                        help="first run every covering test on the sources as they are")
    args = parser.parse_args()
    edited = sorted({edit.path for cleanup in CLEANUPS for edit in cleanup.edits})
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *edited], cwd=ROOT).returncode:
        raise SystemExit(f"commit or stash your changes to {', '.join(edited)} first")
    if args.baseline:
        tests = sorted({test for cleanup in CLEANUPS for test in cleanup.tests})
        failing = [test for test in tests if run_test(test) != 0]
        if failing:
            raise SystemExit(f"these tests fail with every clean-up in place: {failing}")
    unguarded = 0
    for cleanup in CLEANUPS:
        started = time.monotonic()
        passed = check(cleanup)
        unguarded += bool(passed)
        verdict = "guarded" if not passed else f"NOT GUARDED, passed: {', '.join(passed)}"
        print(f"{cleanup.name}: {verdict} ({len(cleanup.tests)} tests, "
              f"{time.monotonic() - started:.0f} s)", flush=True)
    return 1 if unguarded else 0


if __name__ == "__main__":
    sys.exit(main())
