"""A hung job names its culprit (rendezvous/hangs): real 2x2 flows (tests/flows/hangs.py), each
scenario of tests/flows/workers/hang.py one current.torch.run call, its culprit rank chosen
at random; and no false alarm for a long compute phase or for ranks that are late in turn."""

import json
import random
import re

import pytest
import torch

from tests.harness.flow_runs import FLOWS

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(400)

# torch's generic flight recorder, which records gloo's collectives: from torch 2.8 on.
RECORDS_GLOO = hasattr(torch._C._distributed_c10d, "_dump_fr_trace")

WORKER = (FLOWS / "workers" / "hang.py").read_text().splitlines()


def _line_of(text: str) -> int:
    """The line of the worker that holds ``text``, which must be on one line only."""
    found = [number for number, line in enumerate(WORKER, 1) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


# Where each scenario's culprit is: file:line in function, as the diagnosis names it.
WHERE = {
    "sleep": f"hang.py:{_line_of('# SLEEP_LINE')} in prepare",
    "lock": f"hang.py:{_line_of('with lock:')} in prepare",
    "regex": f"hang.py:{_line_of('re.match(')} in prepare",
    "loader": f"hang.py:{_line_of('next(iter(loader))')} in prepare",
    "skip": f"hang.py:{_line_of('# BARRIER_LINE')} in <module>",
}


def _outcomes(run) -> dict:
    """(node, scenario): the SCENARIO record the flow printed; a scenario's second call is
    (node, scenario, 1)."""
    outcomes = {}
    for line in run.task_lines("train"):
        if line.startswith("SCENARIO "):
            record = json.loads(line[len("SCENARIO "):])
            key = (record["node"], record["scenario"])
            outcomes[key + (1,) if key in outcomes else key] = record
    return outcomes


@pytest.mark.skipif(not RECORDS_GLOO, reason="this torch records no gloo collective")
def test_a_hung_job_names_its_culprit_on_every_node(flows):
    """hang_timeout=3, hang_fail_after=2 (tests/flows/hangs.py), one call per scenario: each
    job is failed for its hang, and every node's TorchrunFailed names the culprit (node,
    global and local rank, file:line) and what the others waited in; every node logged the
    diagnosis while the job hung. Last, a hang only reported (hang_fail_after=0): gloo's own
    timeout fails the job, and its TorchrunFailed carries the last diagnosis."""
    culprits = {scenario: random.randrange(4) for scenario in WHERE}
    scenarios = [{"scenario": name, "culprit": rank, "hold": 120} for name, rank in culprits.items()]
    reported = random.randrange(4)
    scenarios.append({"scenario": "sleep", "culprit": reported, "hold": 120,
                      "collective-timeout": 8, "rdzv_conf": "hang_fail_after=0"})
    run = flows.run("hangs.py", "--scenarios", json.dumps(scenarios), timeout=360)
    assert run.returncode == 0, run.output[-6000:]
    outcomes = _outcomes(run)
    for name, rank in culprits.items():
        for node in (0, 1):
            outcome = outcomes[(node, name)]
            assert outcome["kind"] == "hung", (name, rank, outcome)
            assert outcome["hang"]["verdict"] == "culprits", (name, rank, outcome)
            assert outcome["hang"]["culprits"] == [[rank // 2, rank, rank % 2, WHERE[name]]], (
                name, rank, outcome)
            op = "all_reduce"  # each scenario's culprit holds up the all_reduce before the barrier
            assert outcome["hang"]["waits"] == [[op, 4, sorted(set(range(4)) - {rank})]], (
                name, rank, outcome)
    # Both nodes logged the diagnosis while the job hung.
    logged = re.findall(r"metaflow rendezvous \(node (\d)\): hang: ranks? [\d, -]+ ha(?:s|ve) waited",
                        run.output)
    assert sorted(set(logged)) == ["0", "1"], run.output[-6000:]
    # Reported only: gloo's timeout made the failure (a waiting rank's), the diagnosis rode along.
    for node in (0, 1):
        outcome = outcomes[(node, "sleep", 1)]
        assert outcome["kind"] != "hung" and outcome["rank"] != reported, outcome
        assert outcome["hang"]["culprits"] == [
            [reported // 2, reported, reported % 2, WHERE["sleep"]]], outcome
    assert flows.live_processes() == []


def test_no_false_alarm_for_a_long_compute_phase_or_ranks_late_in_turn(flows):
    """A phase of 9 s without collectives (3 x hang_timeout), and ranks each 1.5 s late in turn
    (half of hang_timeout), are never reported hung."""
    scenarios = [{"scenario": "compute", "hold": 9}, {"scenario": "uneven", "hold": 1.5, "rounds": 4}]
    run = flows.run("hangs.py", "--scenarios", json.dumps(scenarios), timeout=300)
    assert run.returncode == 0, run.output[-6000:]
    outcomes = _outcomes(run)
    for node in (0, 1):
        assert outcomes[(node, "compute")]["kind"] == "ok", outcomes
        assert outcomes[(node, "uneven")]["kind"] == "ok", outcomes
    assert ": hang:" not in run.output
    assert flows.live_processes() == []


@pytest.mark.skipif(RECORDS_GLOO, reason="this torch's flight recorder records gloo's collectives")
def test_a_torch_that_records_no_gloo_collective_says_diagnosis_is_off(flows):
    """torch before 2.8: no flight recorder for gloo. A rank held up 8 s (hang_timeout=3) is
    not diagnosed, no rank is blamed, and every node says once that diagnosis is off."""
    scenarios = [{"scenario": "sleep", "culprit": random.randrange(4), "hold": 8}]
    run = flows.run("hangs.py", "--scenarios", json.dumps(scenarios), timeout=300)
    assert run.returncode == 0, run.output[-6000:]
    outcomes = _outcomes(run)
    assert [outcomes[(node, "sleep")]["kind"] for node in (0, 1)] == ["ok", "ok"], outcomes
    said = re.findall(r"metaflow rendezvous \(node (\d)\): hang diagnosis is off: this torch has no "
                      r"flight recorder", run.output)
    assert sorted(said) == ["0", "1"], run.output[-6000:]
    assert ": hang:" not in run.output
    assert flows.live_processes() == []
