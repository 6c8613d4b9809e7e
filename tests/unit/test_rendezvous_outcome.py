"""rendezvous/outcome.py: the outcome file and line that carry a node's failure record to the
launcher."""

from rendezvous.failure import Failure, FailureKind
from rendezvous.outcome import LINE_PREFIX, read_outcome, report


def test_the_outcome_file_carries_the_record(tmp_path, monkeypatch, capsys):
    path = tmp_path / "outcome.json"
    monkeypatch.setenv("METAFLOW_RENDEZVOUS_OUTCOME_FILE", str(path))
    record = Failure(FailureKind.KILLED, "", node_index=1, rank=3, local_rank=1, signal="SIGKILL",
                     traceback_tail="Traceback ...\nValueError: boom")
    report(record)
    assert read_outcome(str(path)) == record
    assert capsys.readouterr().err == f"{LINE_PREFIX}{record.summary}\n"
    assert read_outcome(str(tmp_path / "missing.json")) is None
    path.write_text("{}")
    assert read_outcome(str(path)) is None
