"""The card of a @torchrun step (tests/flows/card_job.py, 2 nodes x 2 processes), fetched with
Metaflow's own client (metaflow.cards.get_cards): live while the ranks run, final after
success, and with the root cause on a failed task's card. The card's pure parts:
tests/unit/test_card_*.py."""

import json
import random
import re
import subprocess
import time
from typing import List

import metaflow  # noqa: F401 - first: the extension's modules import it, and it imports them
from tests.harness.cards import rank_row as row, read_cards
from tests.harness.flow_runs import RunningFlow

from metaflow_extensions.torchrun.plugins.card.ranks import DONE, FAILED, RUNNING, STOPPED


# Deadlines for what takes seconds here: only a hang meets them, also on a machine five
# times slower. The ranks of the live test wait for their release far longer.
CARD_DEADLINE_SECONDS = 120
RANKS_WAIT_SECONDS = 600


def card_env(flows) -> dict:
    # Metaflow's local card store is ./.metaflow/mf.cards of the working directory (the
    # runner's root), while its client reads cards below the run's datastore root: a datastore
    # in the working directory, as users have it, makes the two the same place.
    return {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(flows.root)}


def card_texts(flows, *pathspecs: str, want: List[str] = (), timeout: float = 0,
               live: bool = False) -> List[str]:
    """The Markdown of each task's cards (``live``: with the live view's data), once one's
    holds every text of ``want`` (or at ``timeout``); one reader process for all, since
    each imports Metaflow."""
    def run(argv: List[str], limit: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**flows.env, **card_env(flows)}, cwd=flows.root,
                              capture_output=True, text=True, timeout=limit)

    texts = read_cards(run, pathspecs, want, timeout, live)
    return [texts[pathspec] for pathspec in pathspecs]


def task_pathspecs(output: str) -> dict:
    return {int(node): path for node, path in
            re.findall(r"CARD TASK node=(\d+) pathspec=(\S+)", output)}


def test_card_is_live_while_ranks_run_then_shows_every_rank_done(flows):
    """Default card: a refreshed card shows all 4 ranks running while they wait, then done."""
    release = flows.root / "release"
    running = RunningFlow(flows.start(
        "card_job.py", "--script_args",
        json.dumps({"release-file": str(release), "max-seconds": RANKS_WAIT_SECONDS}),
        env=card_env(flows),
    ))
    deadline = time.monotonic() + CARD_DEADLINE_SECONDS
    while 0 not in task_pathspecs(running.output()):
        assert running.process.poll() is None and time.monotonic() < deadline, running.output()
        time.sleep(0.1)
    paths = task_pathspecs(running.output())
    everyone_running = [row(rank, rank % 2, rank // 2, RUNNING) for rank in range(4)]
    [live] = card_texts(flows, paths[0], want=everyone_running, timeout=CARD_DEADLINE_SECONDS)
    for expected in everyone_running:
        assert expected in live, live
    assert "**Job running**" in live
    # The card's wall time of a rank when the client first saw them all running: an upper
    # bound of how late the live view is.
    print("LIVE CARD: all ranks seen running at wall times",
          re.findall(r"\| ▶ running \| [^|]* \| ([0-9.]+) s \|", live))
    # Lines alone travel once per lines interval: node 1 writes them at most that often
    # and node 0 looks for them as often (card.relay.StoreRelay); they update node 0's live
    # view, not its rendered card. The ranks go on only once that view shows node 1's
    # first lines, however long that took.
    node_1_lines = [f"started rank={rank}" for rank in (2, 3)]
    [relayed] = card_texts(flows, paths[0], want=node_1_lines, timeout=CARD_DEADLINE_SECONDS,
                           live=True)
    for expected in node_1_lines:
        assert expected in relayed, relayed
    release.touch()  # the ranks wait for it

    run = running.finish(timeout=120)
    assert run.returncode == 0, run.output[-4000:]
    # The card's store calls stop with this node's agent: none meets a closed store (about
    # which TCPStore would print a C++ stack trace into the task's log).
    assert "Exception raised from" not in run.output, run.output[-4000:]
    paths = task_pathspecs(run.output)
    final, other = card_texts(flows, paths[0], paths[1])
    for rank in range(4):
        assert row(rank, rank % 2, rank // 2, DONE) + " 0 |" in final, final
        # Node 1's last lines reached node 0 through the store while its ranks waited.
        assert f"started rank={rank}" in final or f"released rank={rank}" in final, final
    assert "released rank=0" in final and "released rank=1" in final
    assert "2 nodes x 2 processes, world size 4" in final
    assert "**Job succeeded**" in final
    # Node 1's card shows its own ranks only.
    assert row(2, 0, 1, DONE) in other and row(3, 1, 1, DONE) in other
    assert "released rank=2" in other and "released rank=3" in other
    assert "| 0 | 0 | 0 |" not in other


def test_failed_task_keeps_a_card_naming_the_failing_rank_and_its_error(flows):
    """Blank card, two calls: the first succeeds; in the second rank 3 (node 1) raises. Both
    failed tasks keep cards with a section per call and the second's root cause."""
    calls = [{}, {"fail-rank": 3, "release-file": "never-released"}]
    run = flows.run("card_job.py", "--script_args", json.dumps(calls),
                    env={**card_env(flows), "TORCHRUN_TEST_CARD_TYPE": "blank"})
    assert run.returncode != 0
    assert "Exception raised from" not in run.output, run.output[-4000:]
    paths = task_pathspecs(run.output)
    node0, node1 = card_texts(flows, paths[0], paths[1])
    first, _, node0 = node0.partition("## torchrun job, call 2 of this step")
    assert "## torchrun job, call 1 of this step" in first
    for rank in range(4):
        assert row(rank, rank % 2, rank // 2, DONE) + " 0 |" in first, first
    assert "Root cause" not in first
    assert row(3, 1, 1, FAILED) + " 1 |" in node0, node0
    for rank in range(3):
        assert row(rank, rank % 2, rank // 2, STOPPED) in node0, node0
    assert "### Root cause" in node0
    assert "**global rank 3 on node 1 (local rank 1), exit 1** failed first" in node0
    assert "ValueError: bad batch on rank 3" in node0
    # Node 1's traceback reaches node 0 with the failure record, whatever its card sent.
    assert 'raise ValueError(f"bad batch on rank {rank}")' in node0, node0
    node1 = node1.partition("## torchrun job, call 2 of this step")[2]
    assert row(3, 1, 1, FAILED) + " 1 |" in node1, node1
    # The failing node's card has the end of the traceback, from its error file.
    assert 'raise ValueError(f"bad batch on rank {rank}")' in node1


def test_card_shows_a_hang_live_with_its_culprit_then_the_stragglers(flows):
    """Call 1: a rank sleeps before an all_reduce for longer than hang_timeout (report only):
    while the job hangs, node 0's card names the culprit, its file:line and stack; once it
    moves on, the card says the wait is over. Call 2: a rank is 0.4 s late at each of 50
    all_reduces (20 s: each probe reads its arrivals every 10 s): the card flags it as
    persistently last."""
    culprit, straggler = random.randrange(4), random.randrange(4)
    calls = [{"scenario": "sleep", "culprit": culprit, "hold": 20},
             {"scenario": "straggler", "culprit": straggler, "hold": 0.4, "rounds": 50}]
    running = RunningFlow(flows.start(
        "card_job.py", "--script", "workers/hang.py", "--script_args", json.dumps(calls),
        "--torchrun_args", json.dumps({"rdzv_conf": "hang_timeout=3"}), env=card_env(flows),
    ))
    deadline = time.monotonic() + CARD_DEADLINE_SECONDS
    while 0 not in task_pathspecs(running.output()):
        assert running.process.poll() is None and time.monotonic() < deadline, running.output()
        time.sleep(0.1)
    paths = task_pathspecs(running.output())
    culprit_row = f"| {culprit} | {culprit // 2} | {culprit % 2} | `hang.py:"
    [live] = card_texts(flows, paths[0], want=["**Job hung**", culprit_row],
                        timeout=CARD_DEADLINE_SECONDS)
    assert "**Job hung**" in live and culprit_row in live, live
    assert "in prepare` | `not in a collective (last completed: all_reduce #3)` |" in live, live
    assert f"**rank {culprit}**, main thread (most recent call first):" in live, live
    run = running.finish(timeout=180)
    assert run.returncode == 0, run.output[-4000:]
    [final] = card_texts(flows, task_pathspecs(run.output)[0])
    # The culprit moved on: a report after that says so, or the job ended first.
    assert ("no rank waits any more" in final
            or "then moved on and succeeded" in final), final
    assert re.search(rf"\| {straggler} \| \d+ of \d+ \| [0-9.]+ s \| \*\*persistently last\*\* \|",
                     final), final
