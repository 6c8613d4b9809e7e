"""rendezvous/failures.py: failure records from what torch reports, through the store, and the
root cause."""

import json
import os

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from rendezvous.errors import JobFailedError
from rendezvous.failure import Failure, FailureKind
from rendezvous.failures import agent_failure, child_failure, encode_failure, parse_failures, root_cause


def test_a_rank_failure_becomes_a_record_with_its_rank_and_error(tmp_path):
    error_file = tmp_path / "error.json"
    error_file.write_text('{"message": {"message": "ValueError: boom", "extraInfo": {"timestamp": "1"}}}')
    failure = ProcessFailure(local_rank=1, pid=10, exitcode=1, error_file=str(error_file))
    record = child_failure(ChildFailedError("train.py", {3: failure}), node_index=1)
    assert (record.kind, record.node_index, record.rank, record.local_rank) == (FailureKind.RAISED, 1, 3, 1)
    assert (record.exit_code, record.signal, record.message) == (1, None, "ValueError: boom")
    assert record.summary == "node 1 failed first: global rank 3 (local rank 1) exited with code 1: ValueError: boom"
    killed = ProcessFailure(local_rank=0, pid=11, exitcode=-9, error_file="<N/A>")
    record = child_failure(ChildFailedError("x", {2: killed}), node_index=0)
    assert (record.kind, record.rank, record.exit_code, record.signal) == (FailureKind.KILLED, 2, None, "SIGKILL")
    assert record.summary == "the control node (node 0) failed first: global rank 2 (local rank 0) was killed by SIGKILL"
    other = agent_failure(KeyError("k"), node_index=2)
    assert (other.kind, other.message, other.node_index, other.rank) == (FailureKind.RENDEZVOUS, "KeyError: 'k'", 2, None)


def test_the_failure_written_first_is_named_within_one_second(tmp_path):
    # rank 3 raised; rank 2 lost it as a peer in the same second, its file written later
    failures = {}
    for rank, message, written in ((2, "RuntimeError: Connection closed by peer", 2_000),
                                   (3, "ValueError: bad batch on rank 3", 1_000)):
        error_file = tmp_path / f"error-{rank}.json"
        error_file.write_text(json.dumps({"message": {"message": message, "extraInfo": {"timestamp": "7"}}}))
        os.utime(error_file, ns=(written, written))
        failures[rank] = ProcessFailure(local_rank=rank - 2, pid=rank, exitcode=1, error_file=str(error_file))
    # rank 1 was stopped by its agent in that second: no error file
    failures[1] = ProcessFailure(local_rank=1, pid=1, exitcode=-15, error_file="<N/A>")
    failures[1].timestamp = 7
    record = child_failure(ChildFailedError("train.py", failures), node_index=0)
    assert (record.rank, record.local_rank, record.kind) == (3, 1, FailureKind.RAISED)
    assert record.message == "ValueError: bad batch on rank 3"


def test_a_failure_saying_a_peer_went_away_is_secondary(tmp_path):
    error_file = tmp_path / "error.json"
    error_file.write_text(
        '{"message": {"message": "RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer",'
        ' "extraInfo": {"timestamp": "1"}}}'
    )
    failure = ProcessFailure(local_rank=0, pid=10, exitcode=1, error_file=str(error_file))
    record = child_failure(ChildFailedError("train.py", {0: failure}), node_index=0)
    assert record.kind == FailureKind.PEER_LOST and record.secondary


def test_a_record_travels_through_the_store_whole(tmp_path):
    callstack = "Traceback (most recent call last):\n" + "".join(
        f'  File "train.py", line {n}, in step\n\tcall()\n' for n in range(30)
    ) + "ValueError: boom"
    error_file = tmp_path / "error.json"
    error_file.write_text(json.dumps({"message": {
        "message": "ValueError: boom", "extraInfo": {"py_callstack": callstack, "timestamp": "1"}}}))
    failed = ChildFailedError("train.py", {
        3: ProcessFailure(local_rank=1, pid=10, exitcode=1, error_file=str(error_file)),
        2: ProcessFailure(local_rank=0, pid=11, exitcode=-15, error_file="<N/A>"),
    })
    record = child_failure(failed, node_index=1)
    assert record.traceback_tail.splitlines() == callstack.splitlines()[-20:]
    lost = Failure(FailureKind.PEER_LOST, "lost a peer", node_index=0)
    raw = (encode_failure(lost) + encode_failure(record)).encode()
    assert raw.count(b"\n") == 2  # one line per record, whatever the traceback holds
    assert parse_failures(raw) == [lost, record]
    assert root_cause(parse_failures(raw)) == record
    # No error file: the record stands without a tail. A line that is not a record is skipped.
    assert child_failure(ChildFailedError("x", {2: failed.failures[2]}), 1).traceback_tail == ""
    assert parse_failures(b"{not json\n" + encode_failure(lost).encode()) == [lost]
    # A kind another version wrote counts as secondary.
    newer = json.dumps({**lost.to_dict(), "kind": "from-the-future"}).encode()
    assert parse_failures(newer)[0].kind == FailureKind.PEER_LOST


def test_root_cause_prefers_a_node_own_failure_over_an_earlier_peer_lost_one():
    lost = Failure(FailureKind.PEER_LOST, "Connection closed by peer", node_index=0, rank=0, local_rank=0, exit_code=1)
    raised = Failure(FailureKind.RAISED, "ValueError: boom", node_index=1, rank=3, local_rank=1, exit_code=1)
    later = Failure(FailureKind.NODE_LOST, "it stopped sending heartbeats", node_index=2)
    assert root_cause([lost, raised, later]) == raised
    assert root_cause([lost]) == lost
    assert root_cause([]) is None
    error = JobFailedError(raised)
    assert (error.node_index, error.failure(0)) == (1, raised)
    assert str(error) == "node 1 failed first: global rank 3 (local rank 1) exited with code 1: ValueError: boom"
