"""card/collectives.py: stragglers from the ranks' arrival times (pure), the hang report and
the arrivals read from a hang directory and carried to node 0; and card/render.py's hang and
straggler sections."""

import json
from pathlib import Path

from rendezvous.failure import Failure, FailureKind
from rendezvous.hangs.diagnosis import diagnose
from rendezvous.hangs.records import Frame, GroupPosition, RankSnapshot
from rendezvous.hangs.probe import REPORT_FILE

from metaflow_extensions.torchrun.plugins.card.collectives import Collectives, stragglers
from metaflow_extensions.torchrun.plugins.card.render import render
from metaflow_extensions.torchrun.plugins.card.state import CallLayout, JobState


def arrivals(times_by_rank):
    """{rank: [t1, t2, ...]}: rank's arrival at collective i+1 of round 0, group "0"."""
    return {rank: {(0, "0", seq): at for seq, at in enumerate(times, 1)}
            for rank, times in times_by_rank.items()}


def test_a_rank_last_in_most_collectives_is_flagged_with_what_it_cost_the_others():
    late = arrivals({0: [i for i in range(12)], 1: [i + 0.01 for i in range(12)],
                     2: [i + 0.5 for i in range(12)]})
    [row] = stragglers(late, world=[0, 1, 2])
    assert (row.rank, row.last, row.collectives, row.persistent) == (2, 12, 12, True)
    assert abs(row.held_up - 12 * 0.49) < 1e-6


def test_ranks_late_in_turn_are_not_persistently_last():
    turns = {rank: [seq + (0.3 if seq % 3 == rank else 0.0) for seq in range(12)] for rank in range(3)}
    rows = stragglers(arrivals(turns), world=[0, 1, 2])
    assert sorted(row.rank for row in rows) == [0, 1, 2]
    assert not any(row.persistent for row in rows)


def test_only_collectives_every_rank_reported_count_and_one_rank_is_no_job():
    partial = arrivals({0: [0.0, 1.0], 1: [0.5]})
    [row] = stragglers(partial, world=[0, 1])
    assert (row.rank, row.collectives) == (1, 1)
    assert stragglers(arrivals({0: [1.0]}), world=[0]) == []
    assert stragglers(partial, world=[0, 1, 2]) == []  # rank 2 reported nothing yet


def _layout(tmp_path: Path, node_index: int) -> CallLayout:
    return CallLayout(call=1, node_index=node_index, num_nodes=2, nproc_per_node="1", nproc=1,
                      rdzv_id="job-a0-c1", log_dir=str(tmp_path / "logs"),
                      hang_dir=str(tmp_path / f"hangs-{node_index}"))


def _progress(hang_dir: Path, rank: int, times) -> None:
    hang_dir.mkdir(exist_ok=True)
    (hang_dir / f"rank-{rank}.json").write_text(json.dumps(
        {"rank": rank, "arrivals": [["0", seq, at, 0] for seq, at in enumerate(times, 1)]}))


def test_node_0_takes_the_other_nodes_arrivals_in_their_payloads_and_shows_the_straggler(tmp_path):
    node_0, node_1 = JobState(_layout(tmp_path, 0), (), "h:1"), JobState(_layout(tmp_path, 1), (), "h:1")
    _progress(tmp_path / "hangs-0", 0, [float(seq) for seq in range(12)])
    _progress(tmp_path / "hangs-1", 1, [seq + 0.4 for seq in range(12)])
    node_0.scan()
    node_1.scan()
    node_0.merge(node_1.payload().data)
    sections = render(node_0.snapshot(), now=20.0)
    assert "### Stragglers" in sections.stragglers
    assert "| 1 | 12 of 12 | 4.80 s | **persistently last** |" in sections.stragglers
    assert sections.hang == ""


def test_the_hang_report_shows_its_culprit_and_stack_and_then_that_the_job_moved_on(tmp_path):
    state = JobState(_layout(tmp_path, 0), (), "h:1")
    where = Frame("/job/prepare.py", 40, "prepare")
    report = diagnose(
        [RankSnapshot(0, 0, 0, (GroupPosition("0", (0, 1), 2, 1, "barrier", 400),)),
         RankSnapshot(0, 1, 1, (GroupPosition("0", (0, 1), 1, 1, "all_reduce"),), where=where,
                      stack=(where, Frame("/job/train.py", 9, "<module>")))],
        hang_timeout=300, time=1000.0)
    hang_dir = tmp_path / "hangs-0"
    hang_dir.mkdir()
    (hang_dir / REPORT_FILE).write_text(json.dumps(report.to_dict()))
    state.scan()
    sections = render(state.snapshot(), now=1001.0)
    assert "**Job hung**" in sections.hang
    assert ("<blockquote>rank 0 has waited 400 s in barrier #2 for rank 1 (node 0, local rank 1)"
            in sections.hang)
    details = sections.hang_details
    assert ("| 1 | 0 | 1 | `prepare.py:40 in prepare` "
            "| `not in a collective (last completed: all_reduce #1)` |") in details
    assert "/job/prepare.py:40 in prepare" in details and "/job/train.py:9 in <module>" in details
    state.finish(None)
    assert "then moved on and succeeded" in render(state.snapshot(), now=1002.0).hang


def test_each_quote_ends_its_part_of_the_card(tmp_path):
    """Metaflow's card renders nothing after an HTML block (our quotes) that does not end
    its component: not the rest of it, not the next components."""
    state = JobState(_layout(tmp_path, 0), (), "h:1")
    where = Frame("/job/prepare.py", 40, "__init__")
    report = diagnose(
        [RankSnapshot(0, 0, 0, (GroupPosition("0", (0, 1), 2, 1, "all_reduce", 400),)),
         RankSnapshot(0, 1, 1, (GroupPosition("0", (0, 1), 1, 1, "all_reduce"),), where=where,
                      stack=(where,))],
        hang_timeout=300, time=1000.0)
    (tmp_path / "hangs-0").mkdir()
    (tmp_path / "hangs-0" / REPORT_FILE).write_text(json.dumps(report.to_dict()))
    state.scan()
    state.finish(Failure(FailureKind.RAISED, "ValueError: bad <batch> __x__", node_index=0,
                         rank=1, local_rank=1, exit_code=1, traceback_tail="Traceback ...\nboom"))
    parts = [part for part in render(state.snapshot(), now=1001.0) if isinstance(part, str)]
    quoted = [part for part in parts if "<blockquote>" in part]
    assert len(quoted) == 2  # the root cause's and the hang's
    for part in quoted:
        assert part.count("<blockquote>") == 1 and part.endswith("</blockquote>"), part
    assert "ValueError: bad &lt;batch&gt; __x__</blockquote>" in quoted[0]


def test_without_a_hang_directory_nothing_is_read(tmp_path):
    collectives = Collectives("", 0)
    assert collectives.scan() == (False, False)
    assert collectives.snapshot([0, 1]).hang is None
