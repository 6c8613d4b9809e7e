"""The card's model and rendering (card.state, card.render): pure, no Metaflow, no processes."""

import json
import subprocess
import sys
from collections import deque
from pathlib import Path

from metaflow_extensions.torchrun.plugins.card.render import _cell, _inline, render
from metaflow_extensions.torchrun.plugins.card.state import (
    DONE,
    FAILED,
    RUNNING,
    STOPPED,
    CallLayout,
    JobState,
    RankState,
    Segment,
    Snapshot,
)
from rendezvous.failure import Failure, FailureKind


def _layout(log_dir: Path, node_index: int, nproc: int = 2) -> CallLayout:
    return CallLayout(call=1, node_index=node_index, num_nodes=2, nproc_per_node=str(nproc),
                      nproc=nproc, rdzv_id="job-a0-c1", log_dir=str(log_dir))


def test_the_model_and_its_rendering_import_without_metaflow():
    code = ("import sys; sys.modules['metaflow'] = None\n"
            "import metaflow_extensions.torchrun.plugins.card.render\n"
            "print([name for name in sys.modules if name.split('.')[0] in ('torch', 'metaflow')"
            " and sys.modules[name] is not None])")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_state_follows_lines_attempts_error_files_and_the_end(tmp_path):
    state = JobState(_layout(tmp_path, node_index=0), settings=(), store_endpoint="h:1")
    assert [r.rank for r in state.snapshot().ranks] == [0, 1, 2, 3]  # the whole job, up front
    state.line("[rank1]: hello | world")
    state.line("not a worker line")
    attempt = tmp_path / "job-a0-c1_1_x" / "attempt_0"
    for local in (0, 1):
        (attempt / str(local)).mkdir(parents=True)
    state.scan()
    ranks = {r.rank: r for r in state.snapshot().ranks}
    assert ranks[0].state == ranks[1].state == RUNNING
    assert list(ranks[1].lines) == ["hello | world"]
    # Node 1's ranks come from its payload; node 1's state only ever sends its own ranks.
    other = JobState(_layout(tmp_path / "n1", node_index=1), settings=(), store_endpoint="h:1")
    other.line("[rank3]: from node 1")
    payload = other.payload()
    assert payload.state_changed  # rank 3 started
    assert [r["rank"] for r in payload.data["ranks"]] == [2, 3]
    assert other.payload() is None  # nothing new
    other.line("[rank3]: another line")
    assert other.payload().state_changed is False  # new lines alone
    state.merge(json.loads(json.dumps(payload.data)))
    assert {r.rank: r.state for r in state.snapshot().ranks}[3] == RUNNING
    # Rank 1 fails: its error file makes it failed at once, and the end fails the call.
    (attempt / "1" / "error.json").write_text(json.dumps({"message": {
        "message": "ValueError: boom", "extraInfo": {"py_callstack": "Traceback\nValueError: boom",
                                                     "timestamp": "1", "rank": "1"}}}))
    state.scan()
    assert {r.rank: r.state for r in state.snapshot().ranks}[1] == FAILED
    state.finish(Failure(FailureKind.RAISED, "ValueError: boom", node_index=0, rank=1,
                         local_rank=1, exit_code=1))
    final = {r.rank: r for r in state.snapshot().ranks}
    assert final[1].state == FAILED and final[1].exit == "1"
    assert final[1].error.endswith("ValueError: boom")
    assert [final[rank].state for rank in (0, 2, 3)] == [STOPPED] * 3


def test_a_restart_ends_the_attempt_as_restarted_or_failed(tmp_path):
    state = JobState(_layout(tmp_path, node_index=1), settings=(), store_endpoint="h:1")
    for attempt in (0, 1):
        for local in (0, 1):
            (tmp_path / "job-a0-c1_1_x" / f"attempt_{attempt}" / str(local)).mkdir(parents=True)
        if attempt == 0:
            state.scan()
    # Local rank 1 failed attempt 0; the scan sees its error file and attempt 1 at once.
    (tmp_path / "job-a0-c1_1_x" / "attempt_0" / "1" / "error.json").write_text(json.dumps(
        {"message": {"message": "boom", "extraInfo": {"py_callstack": "RuntimeError: boom",
                                                      "timestamp": "1", "rank": "3"}}}))
    state.scan()
    state.finish(None)
    ranks = state.snapshot().ranks
    assert [r.rank for r in ranks] == [2, 3] and all(r.restarts == 1 for r in ranks)
    assert [s.outcome for s in ranks[0].segments] == ["restarted", DONE]
    assert [s.outcome for s in ranks[1].segments] == [FAILED, DONE]
    assert ranks[1].error == "RuntimeError: boom"


def test_the_failed_rank_and_its_exit_come_from_the_record(tmp_path):
    state = JobState(_layout(tmp_path, node_index=0), settings=(), store_endpoint="h:1")
    killed = Failure(FailureKind.KILLED, "", node_index=1, rank=2, local_rank=0, signal="SIGKILL")
    state.finish(killed)
    snapshot = state.snapshot()
    ranks = {r.rank: r for r in snapshot.ranks}
    assert (ranks[2].state, ranks[2].exit) == (FAILED, "SIGKILL")
    assert [ranks[rank].state for rank in (0, 1, 3)] == [STOPPED] * 3
    root_cause = render(snapshot, now=snapshot.ended).root_cause
    assert "**global rank 2 on node 1 (local rank 0), exit SIGKILL** failed first" in root_cause
    assert killed.summary in root_cause.replace("\\", "")
    # A node's failure names no rank: the card says which node.
    lost = JobState(_layout(tmp_path, node_index=0), settings=(), store_endpoint="h:1")
    lost.finish(Failure(FailureKind.NODE_LOST, "it stopped sending heartbeats", node_index=1))
    assert "**node 1** failed first" in render(lost.snapshot(), now=0.0).root_cause
    assert all(r.state == STOPPED for r in lost.snapshot().ranks)


def test_markdown_cells_and_timeline_survive_odd_output():
    assert _cell("a|b`c<d\ne") == "a\\|b\\`c&lt;d e"
    assert _inline("rank_3 *x* <y>\n z") == "rank\\_3 \\*x\\* \\<y\\> z"
    rank = RankState(0, 0, 0, state=RUNNING, lines=deque(["x | y"]),
                     segments=[Segment(0, 100.0)])

    snapshot = Snapshot(_layout(Path("/logs"), node_index=0), settings=(), store_endpoint="h:1",
                        started=99.0, ended=None, ranks=(rank,), rounds=((100.0, 0),),
                        failure=None, version=1)
    sections = render(snapshot, now=101.0)
    assert "x \\| y" in sections.rank_table
    bars = render(snapshot, now=102.0).timeline["layer"][0]["data"]["values"]
    assert bars == [{"rank": "rank 0 (node 0)", "order": 0, "start": 1.0, "end": 3.0,
                     "state": RUNNING, "attempt": 0}]
