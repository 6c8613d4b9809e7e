"""@torchrun end to end: real Metaflow flows, real torchrun agents and workers, local nodes."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.flow_runs import FLOWS, RunningFlow

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)


def results(run):
    """``{(node, call): {field: value}}`` from the RESULT lines of tests/flows/two_nodes.py."""
    found = {}
    for line in run.task_lines("train"):
        if line.startswith("RESULT "):
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            found[(int(fields["node"]), int(fields["call"]))] = fields
    return found


def trap_python(directory: Path) -> str:
    """A PATH whose ``python`` is not ours and fails loudly: the venv's bin is not on it."""
    directory.mkdir()
    trap = directory / "python"
    trap.write_text("#!/bin/sh\necho 'the python found on PATH was started' >&2\nexit 97\n")
    trap.chmod(trap.stat().st_mode | stat.S_IEXEC)
    return os.pathsep.join([str(directory), "/usr/bin", "/bin"])


def test_two_nodes_two_processes_from_a_venv_off_path(flows, tmp_path):
    text = 'a "quote", a back\\slash, non-ASCII: é 中 and {"json": 1}'
    run = flows.run(
        "two_nodes.py", "--script", "workers/ranks.py", "--script_args", json.dumps({"text": text}),
        "--nproc", "2",
        env={"PATH": trap_python(tmp_path / "bin")},
    )
    assert run.returncode == 0, run.output[-6000:]
    assert "the python found on PATH was started" not in run.output
    lines = run.task_lines("train")
    for rank in range(4):
        # group rank = Metaflow node index; 1+2+3+4 over 4 ranks; the argument untouched
        assert f"[rank{rank}]: rank={rank} world=4 group_rank={rank // 2} sum=10 text={text}" in lines
        assert f"[rank{rank}]: stderr line of rank {rank}" in lines
        assert f"[rank{rank}]: undecodable \ufffd\ufffd bytes of rank {rank}" in lines
    outcome = results(run)
    assert sorted(outcome) == [(0, 1), (1, 1)]
    for (node, _), fields in outcome.items():
        assert fields["exit_code"] == "0" and fields["restarts"] == "0"
        log_dir = Path(fields["log_dir"])
        assert log_dir.name == f"node-{node}"
        stdout_logs = sorted(log_dir.glob("*/attempt_0/*/stdout.log"))
        assert len(stdout_logs) == 2, list(log_dir.rglob("*"))
        assert f"rank={2 * node + 1} world=4" in stdout_logs[1].read_text(errors="replace")
    assert flows.live_processes() == []


def test_raising_rank_is_named_with_its_traceback(flows):
    # Rank 3 (node 1, local rank 1) raises; ranks 0-2 would idle for 10 minutes.
    run = flows.run(
        "two_nodes.py", "--script", "workers/raise_rank.py", "--script_args", '{"fail-rank": 3}',
        "--nproc", "2",
    )
    assert run.returncode != 0
    out = "\n".join(run.task_lines("train"))
    # Every node raises the same failure record: node 1 from its own workers, node 0
    # from the store; each shows the rank, its error and the end of its traceback,
    # without our frames.
    error = ("torchrun failed:\nnode 1 failed first: global rank 3 (local rank 1) "
             "exited with code 1: ValueError: bad batch on rank 3\n")
    starts = [match.start() for match in re.finditer(re.escape(error), out)]
    assert len(starts) == 2, out[-6000:]
    for start in starts:
        traceback_text = out[start:out.index("Per-rank logs of this node", start)]
        assert 'raise_rank.py", line' in traceback_text and "in check_batch" in traceback_text
        assert "bootstrap.py" not in traceback_text and "runpy" not in traceback_text
    assert flows.live_processes() == []


def test_a_progress_bar_shows_as_its_latest_state_not_as_torn_lines(flows):
    run = flows.run("two_nodes.py", "--script", "workers/progress_bar.py", "--nproc", "2")
    assert run.returncode == 0, run.output[-4000:]
    train = run.task_lines("train")
    bar = [line for line in train if "training: " in line]
    # 30 redraws in 3 s: its state at most every 2 s, and its final state.
    assert bar and bar[-1] == "[rank0]: training: 30/30 [##########]", train
    assert len(bar) <= 4, bar
    assert all(line.count("[rank") == 1 and line.startswith("[rank0]: training: ") for line in bar), bar
    assert flows.live_processes() == []


def test_five_megabytes_on_stderr_alone(flows):
    lines = 50_000  # about 5 MB with the line text of flood_stderr.py
    run = flows.run(
        "two_nodes.py", "--script", "workers/flood_stderr.py", "--script_args", json.dumps({"lines": lines}),
        "--nproc", "1",
    )
    assert run.returncode == 0, run.output[-6000:]
    task_lines = run.task_lines("train")
    for rank in (0, 1):
        prefix = f"[rank{rank}]: "
        flood = [line for line in task_lines if line.startswith(prefix + "flood ")]
        assert [int(line.split()[3]) for line in flood] == list(range(lines))  # all, in order
        assert sum(len(line) - len(prefix) + 1 for line in flood) >= 5_000_000
        assert f"{prefix}stdout after the flood of rank {rank}" in task_lines
        # drained before run() returned: the step's own stderr line comes after every flood line
        stderr_returned = task_lines.index(f"RUN RETURNED node={rank} call=1")
        assert task_lines.index(flood[-1]) < stderr_returned
    assert flows.live_processes() == []


@pytest.mark.parametrize(
    "attributes, options",
    [('{"nproc_per_node": 2}', []), ("{}", ["--with", "resources:gpu=2"])],
    ids=["nproc from the attribute", "nproc from the GPUs requested"],
)
def test_one_node(flows, attributes, options):
    # two processes without nproc_per_node in run(); the program run as a module
    run = flows.run("single_node.py", *options, env={"TORCHRUN_TEST_ATTRIBUTES": attributes})
    assert run.returncode == 0, run.output[-6000:]
    lines = run.task_lines("train")
    for rank in (0, 1):
        assert f"[rank{rank}]: rank={rank} world=2 group_rank=0 sum=3 text=one node" in lines
    assert any(line.startswith("RESULT exit_code=0 restarts=0 parallel=('127.0.0.1', 1, 0,") for line in lines)
    assert flows.live_processes() == []


def test_two_calls_in_one_step_form_two_rendezvous(flows):
    run = flows.run("two_nodes.py", "--script", "workers/ranks.py", "--nproc", "1", "--calls", "2")
    assert run.returncode == 0, run.output[-6000:]
    outcome = results(run)
    assert sorted(outcome) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for (node, call), fields in outcome.items():
        assert fields["exit_code"] == "0"
        # the rendezvous id (first part of the log dir) is per call, the same on both nodes
        assert re.search(rf"-a0-c{call}/node-{node}$", fields["log_dir"]), fields["log_dir"]
    lines = run.task_lines("train")
    assert lines.count("[rank1]: rank=1 world=2 group_rank=1 sum=3 text=") == 2
    assert flows.live_processes() == []


def test_max_restarts_recovers_and_counts_the_restart(flows):
    run = flows.run(
        "two_nodes.py", "--script", "workers/fail_first_round.py", "--nproc", "1",
        "--torchrun_args", '{"max_restarts": 1}',
    )
    assert run.returncode == 0, run.output[-6000:]
    lines = run.task_lines("train")
    assert "[rank1]: RuntimeError: planned failure in the first round" in lines
    for rank in (0, 1):
        assert f"[rank{rank}]: rank={rank} sum=2 after the restart" in lines
    # node 1 restarted its worker; node 0 followed it into the new round
    assert results(run)[(1, 1)]["restarts"] == "1"
    assert flows.live_processes() == []


def test_one_restart_count_for_the_job_on_every_node(flows):
    # Rank 3 (node 1) fails in round 0; node 0's healthy ranks restart with node 1's.
    run = flows.run("two_nodes.py", "--script", "workers/fail_per_round.py",
                    "--script_args", '{"fail-ranks": "3"}', "--torchrun_args", '{"max_restarts": 1}')
    assert run.returncode == 0, run.output[-6000:]
    train = "\n".join(run.task_lines("train"))
    for rank in range(4):
        assert f"[rank{rank}]: rank={rank} restart_count=1 sum=4" in train, train[-4000:]
    assert all(fields["restarts"] == "1" for fields in results(run).values()), results(run)


def test_max_restarts_bounds_the_job_whichever_nodes_fail(flows):
    # One restart for the job: rank 1 (node 0) fails in round 0, rank 3 (node 1) in round 1.
    # With torch's count per node, each node would have spent its own restart, and the
    # job would have restarted twice.
    run = flows.run("two_nodes.py", "--script", "workers/fail_per_round.py",
                    "--script_args", '{"fail-ranks": "1,3"}', "--torchrun_args", '{"max_restarts": 1}')
    assert run.returncode != 0
    train = "\n".join(run.task_lines("train"))
    assert "RuntimeError: rank 3 fails in round 1" in train, train[-4000:]
    assert "restart_count=2" not in train and "RESULT node=" not in train
    assert flows.live_processes() == []


def test_retry_forms_a_fresh_rendezvous(flows):
    run = flows.run("retry_flow.py")
    assert run.returncode == 0, run.output[-6000:]
    lines = run.task_lines("train")
    assert "[rank1]: RuntimeError: planned failure in attempt 0" in lines
    for rank in (0, 1):
        assert any(
            line.startswith(f"[rank{rank}]: rank={rank} attempt=1 sum=2 run_id=RetryFlow-")
            and line.endswith("-a1-c1")
            for line in lines
        ), lines[-40:]
    assert flows.live_processes() == []


def test_bad_input_is_refused_before_anything_starts(flows):
    run = flows.run("bad_inputs.py")
    assert run.returncode != 0
    refused = {}
    for line in run.task_lines():
        if line.startswith("BAD "):
            name, _, message = line[4:].partition(": ")
            refused[name] = message
    assert refused["outside @torchrun"].startswith(
        "TorchrunNotEnabled: current.torch exists only in steps decorated with @torchrun"
    )
    assert "HAS TORCH outside @torchrun: False" in run.task_lines("start")
    expected = {
        "missing entrypoint": "entrypoint 'no_such_script.py' not found: looked for "
        + str(FLOWS / "no_such_script.py"),
        "entrypoint type": "entrypoint must be the path of a script or a function, not int",
        "entrypoint and module": "give exactly one of entrypoint=",
        "neither entrypoint nor module": "give exactly one of entrypoint=",
        "missing module": "module='no_such_package.train': no module or package 'no_such_package'",
        "entrypoint_args type": "entrypoint_args must be a dict",
        "torchrun_args type": "torchrun_args must be a dict",
        "nproc zero": "nproc_per_node=0: give the number of worker processes per node",
        "nproc text": "nproc_per_node='two': give the number",
        "nproc twice": "nproc_per_node is given twice",
        "managed flag": "torchrun_args may not set --rdzv_backend: run() always uses the metaflow",
        "managed flag in a list": "torchrun_args may not set --nnodes",
        "list without dashes": "torchrun_args: 'max_restarts' is neither a flag nor the value of one",
    }
    for name, start in expected.items():
        assert refused.get(name, "").startswith("TorchrunArgumentError: " + start), (name, refused.get(name))
    assert not any(line.startswith("NOT REFUSED") for line in run.task_lines())
    # the uncaught one ends the step with its message and no traceback from deep inside
    train = "\n".join(run.task_lines("train"))
    assert "Invalid torchrun argument:\nentrypoint 'no_such_script.py' not found" in train
    assert "Traceback" not in train
    # nothing was started: no per-rank log directory exists
    assert not list((flows.root / "tmp").glob("metaflow-torchrun/*"))


@pytest.mark.parametrize(
    "attributes, message",
    [
        ({"master_port": "http"}, "@torchrun(master_port='http'): give a TCP port from 1 to 65535"),
        ({"all_nodes_started_timeout": -1}, "@torchrun(all_nodes_started_timeout=-1): give the number of seconds"),
        ({"nproc_per_node": 0}, "@torchrun(nproc_per_node)=0: give the number of worker processes"),
    ],
)
def test_bad_decorator_attribute_stops_the_run_at_start(flows, attributes, message):
    run = flows.run("single_node.py", env={"TORCHRUN_TEST_ATTRIBUTES": json.dumps(attributes)})
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]
    assert "Task is starting" not in run.output


def test_node_dying_before_torchrun_fails_node_zero_at_once(flows):
    # Node 1 raises before it calls run(); node 0 would wait 600 s for it to join.
    run = flows.run(
        "two_nodes.py", "--script", "workers/raise_rank.py", "--script_args", '{"fail-rank": 99}',
        "--broken_node", "1",
    )
    assert run.returncode != 0
    out = "\n".join(run.task_lines("train"))
    assert "RuntimeError: node 1 broke before calling torchrun" in out
    assert "torchrun failed:\nnode 1 failed first: its task " in out, out[-4000:]
    assert "_node_1 exited with code 1 while node 0 was running" in out, out[-4000:]
    assert flows.live_processes() == []


def idle_two_nodes(flows, *script_args: str):
    """two_nodes.py, 2 nodes x 2 ranks that idle for 600 s; returned once all 4 ranks run.

    ``script_args`` are more options of workers/raise_rank.py (``--deaf-to-interrupts``).
    """
    options = {"fail-rank": 99, **{arg.lstrip("-"): True for arg in script_args}}
    return flows.start_until(
        "two_nodes.py", "--script", "workers/raise_rank.py", "--script_args", json.dumps(options),
        "--nproc", "2",
        ready=lambda: len(flows.workers(ignoring=signal.SIGINT if script_args else None)) == 4,
    )


def assert_no_process_left(flows, flow, timeout: float = 120) -> None:
    assert flows.wait_until_none_left(timeout) is not None, (
        [argv[:5] for argv in flows.command_lines().values()], flow.output()[-4000:])


# Each way a run is stopped, and the clean-up of ours that alone ends some of its processes
# (tests/check_cleanup_guards.py removes each clean-up and checks that its test fails):
# - Ctrl-C at a terminal: SIGINT to the foreground process group, the runtime, the tasks
#   and the agents; torch starts the workers in sessions of their own, so they hear of it
#   from their agent only, and ranks blocked in a collective that only note SIGTERM (as
#   Lightning's do) go on. The task stops its agent, and the workers die with it
#   (worker.bootstrap.die_with_parent).
# - SIGTERM to the process group (a CI runner's or a batch system's stop): every process of
#   the group goes at once, but the card's relays run in sessions of their own and die with
#   their tasks (card.exchange).
# - `kill PID` of the flow process alone: Metaflow's runtime dies without a word to its
#   tasks; each task dies with it (the decorator's die_with_parent), then the chain below.
STOPS = {
    "Ctrl-C: SIGINT to the process group, ranks deaf to it": (
        signal.SIGINT, True, lambda flows: idle_two_nodes(flows, "--deaf-to-interrupts")),
    "SIGTERM to the process group, with the card's relays": (
        signal.SIGTERM, True, lambda flows: flows.start_until(
            "card_job.py", "--script_args",
            json.dumps({"release-file": "never-created", "max-seconds": 600}),
            ready=lambda: len(flows.workers()) == 4 and len(flows.relays()) == 2)),
    "kill PID: SIGTERM to the flow process alone": (
        signal.SIGTERM, False, lambda flows: idle_two_nodes(flows)),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_stopped_run_leaves_no_process(flows, stop):
    sig, whole_group, start = STOPS[stop]
    flow = start(flows)
    if whole_group:
        os.killpg(flow.process.pid, sig)
    else:
        flow.process.send_signal(sig)
    # The bound; bench/faults.py measures a few seconds. The ranks would idle 600 s.
    assert_no_process_left(flows, flow, timeout=30)
    assert flow.finish(timeout=30).returncode != 0


def test_interrupted_runner_program_leaves_no_process(flows):
    """A notebook's "interrupt the kernel": SIGINT to the Python program that runs the flow
    through Metaflow's Runner API, and to nothing else.

    The Runner's handler SIGTERMs the flow process and its children (the runtime's tasks),
    and SIGKILLs them 2 s later; node 1's task is a child of node 0's, and the agents and
    workers are further down, so only our clean-up ends them: each agent dies with its
    task (launch.launcher), each worker with its agent, and node 1's job fails once node
    0's store is gone.
    """
    options = json.dumps({"fail-rank": 99})
    program = RunningFlow(subprocess.Popen(
        [sys.executable, str(FLOWS / "runner_program.py"), str(FLOWS / "two_nodes.py"),
         "script=workers/raise_rank.py", f"script_args={options}", "nproc=2"],
        env=flows.env, cwd=flows.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    ))
    deadline = time.monotonic() + 200
    while len(flows.workers()) < 4:
        assert program.process.poll() is None and time.monotonic() < deadline, program.output()
        time.sleep(0.2)
    program.process.send_signal(signal.SIGINT)
    assert_no_process_left(flows, program, timeout=30)
    finished = program.finish(timeout=30)
    assert "RUNNER STATUS failed" in finished.output, finished.output[-4000:]


def test_killed_control_task_takes_every_node_down(flows):
    # Node 0's agent waits in the rendezvous; node 1 sleeps in its step, outside torchrun.
    flow = flows.start_until(
        "two_nodes.py", "--script", "workers/raise_rank.py", "--sleeping_node", "1",
        ready=lambda: flows.processes_running(b"rendezvous") and flows.processes_running(b"ubf_task"),
    )
    control = flows.processes_running(b"ubf_control")
    assert len(control) == 1, control
    os.kill(control[0], signal.SIGKILL)  # no finally block runs in it
    assert_no_process_left(flows, flow)
    assert flow.finish(timeout=120).returncode != 0


def test_killed_agent_takes_its_workers_and_the_other_node_down(flows):
    flow = idle_two_nodes(flows)
    agent = flows.agents()[1]
    own_workers = set(flows.children(agent))
    assert len(own_workers) == 2, flows.command_lines()
    os.kill(agent, signal.SIGKILL)
    # Nothing signals these workers but the kernel, through the PR_SET_PDEATHSIG that
    # the worker bootstrap asked for: the agent is their parent.
    deadline = time.monotonic() + 60
    while own_workers & set(flows.live_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not own_workers & set(flows.live_processes()), flow.output()[-4000:]
    # Long before the other node's idle ranks (600 s) would end.
    run = flow.finish(timeout=120)
    assert run.returncode != 0
    out = "\n".join(run.task_lines("train"))
    assert "node 1 failed first: its torchrun agent was killed by SIGKILL" in out, out[-4000:]
    assert "_node_1 exited with code 1 while node 0 was running" in out, out[-4000:]
    assert_no_process_left(flows, flow)


def test_three_runs_at_once_do_not_collide(flows):
    started = [RunningFlow(flows.start("two_nodes.py", "--script", "workers/ranks.py", "--nproc", "1"))
               for _ in range(3)]
    runs = [flow.finish(timeout=250) for flow in started]
    rdzv_ids = set()
    for run in runs:
        assert run.returncode == 0, run.output[-6000:]
        lines = run.task_lines("train")
        for rank in (0, 1):  # each run's two ranks found each other, and nobody else
            assert f"[rank{rank}]: rank={rank} world=2 group_rank={rank} sum=3 text=" in lines
        rdzv_ids |= {Path(fields["log_dir"]).parent.name for fields in results(run).values()}
    assert len(rdzv_ids) == 3, rdzv_ids  # one rendezvous per run, shared by its nodes
    assert flows.live_processes() == []


def test_step_inherited_from_a_base_flow_in_another_module(flows):
    run = flows.run("inherited.py")
    assert run.returncode == 0, run.output[-6000:]
    lines = run.task_lines("train")
    for rank in (0, 1):
        assert f"[rank{rank}]: rank={rank} world=2 group_rank={rank} sum=3 text=InheritedFlow" in lines
    assert "JOINED nodes=[0, 1]" in run.task_lines("join")
    assert flows.live_processes() == []


def test_step_reached_without_num_parallel_is_refused_by_metaflow(flows):
    run = flows.run("no_num_parallel.py", timeout=60)
    assert run.returncode != 0
    # Metaflow's own check of the graph: a @torchrun step is a @parallel step
    assert "Validity checker found an issue" in run.output, run.output[-3000:]
    assert "is called after an @parallel step but is not a join step" in run.output
    assert "[rank" not in run.output  # refused before any task ran
