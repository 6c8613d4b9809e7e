"""card/state.py: the card's model of a job, from lines, attempt folders, error files,
restarts, payloads between nodes and the failure record; pure, no Metaflow, no processes."""

import json
from pathlib import Path

from metaflow_extensions.torchrun.plugins.card.render import render
from metaflow_extensions.torchrun.plugins.card.ranks import DONE, FAILED, RUNNING, STOPPED
from metaflow_extensions.torchrun.plugins.card.state import CallLayout, JobState
from rendezvous.failure import Failure, FailureKind


def _layout(log_dir: Path, node_index: int, nproc: int = 2) -> CallLayout:
    return CallLayout(call=1, node_index=node_index, num_nodes=2, nproc_per_node=str(nproc),
                      nproc=nproc, rdzv_id="job-a0-c1", log_dir=str(log_dir))


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
    assert f"<blockquote>{killed.summary}</blockquote>" in root_cause
    # A node's failure names no rank: the card says which node.
    lost = JobState(_layout(tmp_path, node_index=0), settings=(), store_endpoint="h:1")
    lost.finish(Failure(FailureKind.NODE_LOST, "it stopped sending heartbeats", node_index=1))
    assert "**node 1** failed first" in render(lost.snapshot(), now=0.0).root_cause
    assert all(r.state == STOPPED for r in lost.snapshot().ranks)
    # A job failed for a hang: its culprit held the job up, with no exit of its own.
    hung = JobState(_layout(tmp_path, node_index=0), settings=(), store_endpoint="h:1")
    hung.finish(Failure(FailureKind.HUNG, "the job hung", node_index=0, rank=1, local_rank=1))
    root_cause = render(hung.snapshot(), now=0.0).root_cause
    assert "**global rank 1 on node 0 (local rank 1)** held the job up:" in root_cause, root_cause
    assert "exit" not in root_cause.split("<blockquote>")[0], root_cause
