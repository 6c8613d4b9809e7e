"""Function entrypoints and their return values, and the original package's names.

Real flows on 2 nodes x 2 processes (tests/flows/function_entrypoints.py,
tests/flows/original_package.py), plus the pure checks of what is refused.
"""

import functools
import json
import pickle
import threading

import pytest

from metaflow_extensions.torchrun.plugins.worker import bootstrap as worker_bootstrap
from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.worker.files import read_return_values
from metaflow_extensions.torchrun.plugins.launch.launcher import refuse_removed_options
from metaflow_extensions.torchrun.plugins.result import TorchrunResult
from metaflow_extensions.torchrun.plugins.launch.program import (
    Entrypoint,
    function_call,
    resolve_entrypoint,
)

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)


def got(run, case):
    """``{node: value}`` from the flow's ``GOT <case> <json>`` lines."""
    found = {}
    for line in run.task_lines():
        if line.startswith(f"GOT {case} "):
            value = json.loads(line[len(f"GOT {case} "):])
            found[value.get("node") if isinstance(value, dict) else None] = value
    return found


def test_function_entrypoints_on_two_nodes(flows):
    run = flows.run("function_entrypoints.py")
    assert run.returncode == 0, run.output[-6000:]

    # keyword arguments, non-ASCII text, a collective; each node gets its own ranks'
    # values, and result.value is rank 0's on node 0 only
    keyword = got(run, "keyword")
    for node in (0, 1):
        values = keyword[node]["values"]
        assert sorted(values) == [str(2 * node), str(2 * node + 1)], keyword
        for rank, value in values.items():
            assert value == {"rank": int(rank), "sum": 60.0, "label": "héllo wörld ✓",
                             "master": True}
    assert keyword[0]["value"] == keyword[0]["values"]["0"]
    assert keyword[1]["value"] is None
    assert got(run, "artifacts")[None] == [-1, 60.0]  # self.final_value = result.value, on node 0

    # positional arguments, a function of a module next to the flow
    positional = got(run, "positional")
    assert positional[0]["values"] == {
        "0": {"rank": 100, "word": "ünïcode", "world": 4},
        "1": {"rank": 101, "word": "ünïcode", "world": 4},
    }
    assert sorted(positional[1]["values"]) == ["2", "3"]

    # after a restart, the values of the attempt that succeeded: node 1 restarted after
    # its rank 3 failed (its rank 2 had returned a value in that attempt); node 0 either
    # failed with it and restarted too, or only followed it into the new round, which
    # torch counts as no restart
    restart = got(run, "restart")
    assert restart[1]["restarts"] == 1, restart
    assert restart[1]["values"] == {"2": {"rank": 2, "attempt": 1}, "3": {"rank": 3, "attempt": 1}}
    attempt = restart[0]["restarts"]
    assert restart[0]["values"] == {"0": {"rank": 0, "attempt": attempt},
                                    "1": {"rank": 1, "attempt": attempt}}, restart

    # a raising function is reported like a script: the rank, its traceback without our
    # frames; the other node names it and stops
    # every node gets the same failure record, whichever node failed first
    raises = got(run, "raises")
    for node in (0, 1):
        assert raises[node]["summary"] == (
            "node 1 failed first: global rank 3 (local rank 1) exited with code 1: "
            "ValueError: bad value on rank 3"
        ), raises
        assert raises[node]["record"] == {
            "kind": "raised", "node_index": 1, "rank": 3, "local_rank": 1, "exit_code": 1,
            "signal": None, "reason": "ValueError: bad value on rank 3"}, raises
        assert "in raise_on_rank_three" in raises[node]["traceback"]  # node 0: carried by the record
    assert "bootstrap.py" not in raises[1]["traceback"]
    assert "importlib" not in raises[1]["traceback"]

    # a value that does not pickle fails the run, naming the rank and the type
    unpicklable = got(run, "unpicklable")
    for node in (0, 1):
        assert "rank 2 returned a value of type _thread.lock that cannot be pickled" in (
            unpicklable[node]["summary"]
        ), unpicklable

    refused = got(run, "refused")[None]
    assert refused["lambda"].startswith("entrypoint=FunctionEntrypointsFlow.train.<locals>.<lambda> is a lambda")
    assert refused["bound method"].startswith("entrypoint=FunctionEntrypointsFlow.join is a bound method")
    assert refused["cloud output"].startswith("push_results_dir_to_cloud is not supported")
    assert refused["local output"].startswith("local_output_dir is not supported")
    assert flows.live_processes() == []


def test_flows_of_the_original_package_run_unchanged(flows):
    run = flows.run("original_package.py")
    assert run.returncode == 0, run.output[-6000:]
    start = run.task_lines("start")
    for text in ("positional", "keywords"):
        for rank in (0, 1):
            assert f"[rank{rank}]: rank={rank} world=2 group_rank=0 sum=3 text={text}" in start, start
    assert any(line.startswith("SINGLE NODE exit_code=0 log_dir=") for line in start)
    train = run.task_lines("train")
    for rank in range(2):  # one process per node, as in the original
        assert f"[rank{rank}]: rank={rank} world=2 group_rank={rank} sum=3 text=" in train, train
    assert flows.live_processes() == []


def test_single_node_failure_names_the_rank(flows):
    run = flows.run("original_package.py", "--fail_rank", "1")
    assert run.returncode != 0
    start = "\n".join(run.task_lines("start"))
    assert ("the control node (node 0) failed first: global rank 1 (local rank 1) exited with code 1: "
            "ValueError: bad batch on rank 1") in start
    assert 'raise_rank.py", line' in start
    assert not run.task_lines("train")
    assert flows.live_processes() == []


# What is refused before anything starts (pure)


def top_level_function(x):
    return x


class Holder:
    @staticmethod
    def static_function():
        return 1

    def method(self):
        return 2


def test_top_level_and_static_functions_are_named_by_module(tmp_path):
    assert resolve_entrypoint(top_level_function, None, str(tmp_path)) == Entrypoint(
        "function", f"{__name__}:top_level_function", str(tmp_path)
    )
    assert resolve_entrypoint(Holder.static_function, None, str(tmp_path)).target == (
        f"{__name__}:Holder.static_function"
    )


def nested_function():
    def inner():
        return 1

    return inner


@pytest.mark.parametrize(
    "function, message",
    [
        (lambda: 1, "is a lambda: the workers cannot import it by name"),
        (nested_function(), "is defined inside another function"),
        (Holder().method, "is a bound method"),
        (functools.partial(top_level_function, 1), "is a partial, not a function defined with `def`"),
        (len, "is a builtin_function_or_method, not a function"),
    ],
)
def test_functions_no_worker_can_import_are_refused(tmp_path, function, message):
    with pytest.raises(TorchrunArgumentError, match="Define the function with `def` at the top level") as refused:
        resolve_entrypoint(function, None, str(tmp_path))
    assert message in str(refused.value)


def test_function_arguments():
    assert pickle.loads(function_call({"a": 1, "b": "é"})) == ((), {"a": 1, "b": "é"})
    assert pickle.loads(function_call([1, "x"])) == ((1, "x"), {})
    assert pickle.loads(function_call((1,))) == ((1,), {})
    assert pickle.loads(function_call(None)) == ((), {})
    with pytest.raises(TorchrunArgumentError, match="must be a dict .keyword arguments. or a list"):
        function_call("--epochs 3")
    with pytest.raises(TorchrunArgumentError, match="the keys of a dict are its keyword arguments"):
        function_call({"--epochs": 3})
    with pytest.raises(TorchrunArgumentError, match="entrypoint_args cannot be sent to the workers"):
        function_call([threading.Lock()])


def test_removed_options_of_the_original_are_refused():
    refuse_removed_options({"push_results_dir_to_cloud": None, "local_output_dir": None})
    for name in ("push_results_dir_to_cloud", "local_output_dir", "cloud_output_dir"):
        with pytest.raises(TorchrunArgumentError, match=f"^{name} is not supported: .* Instead, "):
            refuse_removed_options({name: False})


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
