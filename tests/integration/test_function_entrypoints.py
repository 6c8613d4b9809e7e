"""Function entrypoints and their return values, and the original package's names.

Real flows on 2 nodes x 2 processes (tests/flows/function_entrypoints.py,
tests/flows/original_package.py). What is refused before anything starts:
tests/unit/test_launch_program.py and test_launch_launcher.py.
"""

import json

import pytest

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
