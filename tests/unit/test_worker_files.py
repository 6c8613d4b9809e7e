"""worker/files.py: what the launcher reads of the workers' files: the first error of an
attempt, as the bootstrap writes it, and the return values of the last attempt."""

import json
import os
import threading

import pytest

from metaflow_extensions.torchrun.plugins.result import TorchrunResult
from metaflow_extensions.torchrun.plugins.worker import bootstrap as worker_bootstrap
from metaflow_extensions.torchrun.plugins.worker.files import first_error, read_return_values
from rendezvous.failure import FailureKind

pytestmark = pytest.mark.timeout(300)


def test_the_launcher_reads_the_error_files_the_bootstrap_writes(tmp_path, monkeypatch):
    attempt = tmp_path / "attempt_0"
    for local_rank in (0, 1):  # rank 0 first: its timestamp is never the later one
        (attempt / str(local_rank)).mkdir(parents=True)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / str(local_rank) / "error.json"))
        monkeypatch.setenv("RANK", str(4 + local_rank))
        worker_bootstrap.record_error(ValueError(f"bad {local_rank}"), f"trace {local_rank}")
    (attempt / "2").mkdir()
    (attempt / "2" / "error.json").write_text('{"written by": "the program"}')
    first = first_error(str(attempt), node_index=2)
    assert (first.kind, first.node_index, first.rank, first.local_rank) == (FailureKind.RAISED, 2, 4, 0)
    assert (first.exit_code, first.message, first.traceback_tail) == (1, "ValueError: bad 0", "trace 0")
    assert first_error(str(tmp_path / "attempt_1"), node_index=2) is None
    # in one second, the file written first wins: local rank 1's, made older here
    for local_rank, written in ((0, 2_000), (1, 1_000)):
        path = attempt / str(local_rank) / "error.json"
        data = json.loads(path.read_text())
        data["message"]["extraInfo"]["timestamp"] = "7"
        path.write_text(json.dumps(data))
        os.utime(path, ns=(written, written))
    assert first_error(str(attempt), node_index=2).local_rank == 1


def test_return_values_come_from_the_last_attempt(tmp_path, monkeypatch):
    for attempt, rank, value in (("0", "2", "first"), ("1", "2", "second"), ("1", "3", [3])):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        monkeypatch.setenv("RANK", rank)
        worker_bootstrap.save_return_value(value, str(tmp_path))
    assert read_return_values(str(tmp_path)) == {2: "second", 3: [3]}
    assert read_return_values(str(tmp_path / "none")) == {}
    with pytest.raises(worker_bootstrap.ReturnValueError, match="rank 3 returned a value of type _thread.lock"):
        worker_bootstrap.save_return_value(threading.Lock(), str(tmp_path))
    result = TorchrunResult(0, 1.0, 0, "", {0: "zero", 1: "one"})
    assert result.value == "zero"
    assert TorchrunResult(0, 1.0, 0, "", {2: "two"}).value is None
