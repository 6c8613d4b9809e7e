"""rendezvous/outcome.py: the outcome file and line that carry a node's failure record to the
launcher."""

import io

from rendezvous.failure import Failure, FailureKind
from rendezvous.outcome import LINE_PREFIX, read_outcome, report, say


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


class _Writes(io.StringIO):
    """A stream that keeps each write apart."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_a_line_is_one_write(monkeypatch):
    """Nodes of a local run share one unbuffered stderr: a line and its end in one write,
    so that another node's line cannot come between them."""
    stream = _Writes()
    monkeypatch.setattr("sys.stderr", stream)
    say("metaflow rendezvous (node 1): hang: ranks 0-2 have waited 3 s")
    assert stream.writes == ["metaflow rendezvous (node 1): hang: ranks 0-2 have waited 3 s\n"]
