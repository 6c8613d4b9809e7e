"""rendezvous/hangs: the verdict from every rank's position (diagnosis), faulthandler's dump
read as frames (stacks), and the records' round trip; pure, no processes (the real flows:
tests/integration/test_hangs.py)."""

import json
from dataclasses import asdict
from types import SimpleNamespace

from rendezvous.failure import Failure, FailureKind
from rendezvous.hangs import probe
from rendezvous.hangs.diagnosis import diagnose
from rendezvous.hangs.records import (
    Frame,
    GroupPosition,
    HangReport,
    RankSnapshot,
    Verdict,
    snapshot_from_dict,
)
from rendezvous.hangs.stacks import below_the_program, thread_stacks, user_frame

TIMEOUT = 300


def rank(number, entered, completed, op="all_reduce", waited=0.0, group="0", where=None,
         ranks=(0, 1, 2, 3)):
    return RankSnapshot(
        node=number // 2, rank=number, local_rank=number % 2,
        groups=(GroupPosition(group, tuple(ranks), entered, completed, op, waited),),
        where=where,
    )


def test_ranks_waiting_long_name_the_rank_that_never_entered():
    prepare = Frame("/job/prepare.py", 40, "prepare")
    report = diagnose(
        [rank(1, 2, 1, "barrier", 612), rank(2, 2, 1, "barrier", 611), rank(3, 2, 1, "barrier", 600),
         rank(0, 1, 1, where=prepare)],
        TIMEOUT,
    )
    assert report.verdict == Verdict.CULPRITS
    assert [(c.node, c.rank, c.local_rank, c.where) for c in report.culprits] == [(0, 0, 0, prepare)]
    assert [(w.op, w.seq, w.ranks, w.waited) for w in report.waits] == [("barrier", 2, (1, 2, 3), 612)]
    assert report.summary == (
        "ranks 1-3 have waited 612 s in barrier #2 for rank 0 (node 0, local rank 0), which is at "
        "prepare.py:40 in prepare, not in a collective (last completed: all_reduce #1)"
    )


def test_every_member_in_the_same_collective_is_a_transport_hang_blaming_no_rank():
    report = diagnose([rank(r, 7, 6, waited=400) for r in range(4)], TIMEOUT)
    assert report.verdict == Verdict.TRANSPORT and report.culprits == ()
    assert report.summary == (
        "ranks 0-3 have waited 400 s in all_reduce #7: every rank is inside a collective and "
        "none is missing from one, so no rank is behind: a transport hang (a cut link, a stuck "
        "network card or driver)")


def test_ranks_stuck_one_collective_behind_the_others_are_a_transport_hang_too():
    """A link cut mid-collective: some ranks completed #7 and wait in #8, the others are still
    in #7, which nobody is missing from."""
    report = diagnose([rank(0, 8, 7, waited=400), rank(1, 8, 7, waited=400),
                       rank(2, 7, 6, waited=401), rank(3, 7, 6, waited=401)], TIMEOUT)
    assert report.verdict == Verdict.TRANSPORT and report.culprits == ()
    assert [(w.seq, w.ranks) for w in report.waits] == [(7, (2, 3)), (8, (0, 1))]


def test_short_waits_and_phases_without_collectives_are_no_hang():
    assert diagnose([rank(0, 3, 2, waited=299), rank(1, 2, 2)], TIMEOUT).verdict == Verdict.NONE
    assert diagnose([rank(r, 5, 5) for r in range(4)], TIMEOUT).verdict == Verdict.NONE


def test_the_rank_in_another_op_under_the_same_number_skipped_a_collective():
    report = diagnose([rank(0, 4, 3, waited=400), rank(1, 4, 3, waited=400),
                       rank(2, 4, 3, waited=400), rank(3, 4, 3, "barrier", waited=400)], TIMEOUT)
    assert report.verdict == Verdict.CULPRITS
    assert [c.rank for c in report.culprits] == [3]
    assert [w.ranks for w in report.waits] == [(0, 1, 2)]
    assert "in barrier #4 where the others are in all_reduce" in report.culprits[0].position


def test_a_rank_that_did_not_answer_is_named_as_such():
    report = diagnose([rank(0, 2, 1, waited=400), rank(1, 2, 1, waited=400)], TIMEOUT,
                      world=range(4), silent_nodes=[1])
    assert [c.rank for c in report.culprits] == [2, 3]
    assert all(c.node is None and "did not answer" in c.position for c in report.culprits)
    assert report.silent_nodes == (1,)


def test_only_the_members_of_the_waiting_group_are_culprits():
    sub = dict(group="1", ranks=(0, 1))
    report = diagnose([rank(0, 3, 2, waited=400, **sub), rank(1, 2, 2, **sub),
                       rank(2, 9, 9), rank(3, 9, 9)], TIMEOUT)
    assert [c.rank for c in report.culprits] == [1]
    assert report.waits[0].collective == "all_reduce #3 of group 1"


def test_reports_and_failures_carrying_them_survive_json():
    report = diagnose([rank(1, 2, 1, waited=400, where=Frame("t.py", 3, "f")), rank(0, 1, 1)],
                      TIMEOUT, time=5.0)
    assert HangReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    failure = Failure(FailureKind.HUNG, report.summary, 0, 0, 0, hang=report)
    assert Failure.from_json(failure.to_json()) == failure
    assert failure.summary.startswith("the job hung: rank 1 has waited 400 s in all_reduce #2")
    snapshot = report.ranks[0]
    assert snapshot_from_dict(json.loads(json.dumps(asdict(snapshot)))) == snapshot


def test_a_report_this_version_cannot_read_leaves_the_failure_without_one():
    failure = Failure(FailureKind.RAISED, "boom").to_dict()
    failure["hang"] = {"verdict": "something new"}
    assert Failure.from_dict(failure).hang is None


DUMP = """\
Thread 0x00007f2b8b7fe700 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/usr/lib/python3.11/threading.py", line 622 in wait

Current thread 0x00007f2b8c1bbb80 (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 5356 in barrier
  File "/job/train.py", line 40 in prepare
  File "<frozen runpy>", line 88 in _run_code
  File "/job/train.py", line 52 in <module>
"""


def test_faulthandler_dump_gives_each_threads_frames_and_the_users_innermost_frame():
    stacks = thread_stacks(DUMP)
    assert sorted(stacks) == [0x00007F2B8B7FE700, 0x00007F2B8C1BBB80]
    main = stacks[0x00007F2B8C1BBB80]
    assert main[1] == Frame("/job/train.py", 40, "prepare")
    assert user_frame(main, ["/usr/lib/python3.11", "/venv/lib/python3.11/site-packages"]) == main[1]
    assert user_frame(stacks[0x00007F2B8B7FE700], ["/usr/lib/python3.11"]) is None


def test_a_dump_cut_short_and_python_313_thread_names_still_parse():
    text = 'Thread 0x0000000000000abc [worker] (most recent call first):\n  File "/a.py", line 1 in f\n  File "/b.py", li'
    assert thread_stacks(text) == {0xABC: (Frame("/a.py", 1, "f"),)}


def test_a_rank_whose_probe_stopped_holds_the_gil_and_is_the_culprit_whatever_its_stale_position():
    """A regular expression holding the GIL since the rank was in all_reduce #3: its probe
    last saw it there, waiting; the others completed #3 and wait in #4."""
    stale = RankSnapshot(node=1, rank=3, local_rank=1, probe_silent=40.0,
                         groups=(GroupPosition("0", (0, 1, 2, 3), 3, 2, "all_reduce", 45.0),))
    report = diagnose([rank(0, 4, 3, waited=400), rank(1, 4, 3, waited=400),
                       rank(2, 4, 3, waited=400), stale], TIMEOUT)
    assert report.verdict == Verdict.CULPRITS
    assert [(c.rank, c.position) for c in report.culprits] == [
        (3, "in a call that has held the GIL for 40 s (a long C call, not a collective)")]
    assert [w.seq for w in report.waits] == [4]


class _Dist:
    def __init__(self, backend):
        self._backend = backend

    def get_backend(self):
        return self._backend


def test_only_a_recorder_that_records_the_workers_backend_is_read():
    """torch before 2.8 has only ProcessGroupNCCL's recorder, which records nothing of gloo."""
    generic, nccl = object(), object()
    both = SimpleNamespace(_dump_fr_trace=generic, _dump_nccl_trace=nccl)
    nccl_only = SimpleNamespace(_dump_nccl_trace=nccl)
    assert probe._recorders(both, _Dist("gloo")) == [generic, nccl]
    assert probe._recorders(SimpleNamespace(_dump_fr_trace=generic), _Dist("gloo")) == [generic]
    assert probe._recorders(nccl_only, _Dist("gloo")) == []
    assert probe._recorders(nccl_only, _Dist("nccl")) == [nccl]
    assert probe._recorders(SimpleNamespace(), _Dist("nccl")) == []


def test_a_probe_that_cannot_read_its_recorder_says_its_position_is_unknown(tmp_path, monkeypatch):
    """Not a silent probe, which would read as a rank holding the GIL: a culprit."""
    def unreadable(self):
        raise TypeError("a recorder of another shape")

    monkeypatch.setattr(probe._Recorder, "read", unreadable)
    monkeypatch.setattr(probe, "INTERVAL", 0.01)
    probe._Probe(str(tmp_path), rank=2, stacks_signal=None).run()
    record = probe.read_progress(probe.progress_path(str(tmp_path), 2))
    assert record["positions_known"] is False and record["rank"] == 2
    unknown = RankSnapshot(node=1, rank=2, local_rank=0, positions_known=False, probe_silent=600.0)
    assert not unknown.holds_gil
    assert unknown.position == "position unknown (no flight recorder on its torch)"


def test_a_stack_ends_at_the_users_outermost_frame_not_at_the_launcher():
    stack = (Frame("/venv/lib/torch/distributed/c10d.py", 9, "all_reduce"),
             Frame("/job/train.py", 40, "step"), Frame("/job/train.py", 90, "<module>"),
             Frame("<frozen runpy>", 88, "_run_code"),
             Frame("/venv/lib/metaflow_extensions/worker/bootstrap.py", 313, "<module>"))
    library = ["/venv/lib/torch", "/venv/lib/metaflow_extensions/worker"]
    assert below_the_program(stack, library) == stack[:3]
    assert user_frame(stack, library) == stack[1]
    assert below_the_program(stack[3:], library) == stack[3:]  # no user frame: all of it
