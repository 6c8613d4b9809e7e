"""The backend under real torchrun agents, real workers and node 0's real TCPStore, on loopback;
hypothesis over --rdzv-conf values through a real launch."""

import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rendezvous.endpoint import derive_port
from rendezvous.store import wait_until_listening
from tests.harness.torchrun_nodes import FAST, SCRIPTS, Job, lines_with, wait_for_output
from tests.unit.test_rendezvous_settings import KEYS  # the keys the unit test draws from

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("launcher", ["torchrun", "module"])
def test_two_nodes_two_processes_all_reduce(tmp_path, launcher):
    with Job(tmp_path, 2, "allreduce.py", nproc_per_node=2, launcher=launcher) as job:
        job.start()
        assert job.wait() == {0: 0, 1: 0}
        for node in (0, 1):
            lines = lines_with(job.output(node), "sum=")
            assert len(lines) == 2, job.output(node)
            for line in lines:
                # group rank is the Metaflow node index; 1+2+3+4 over 4 ranks
                assert f"group_rank={node}" in line and "world=4" in line and "sum=10" in line
                assert "master=127.0.0.1" in line
        assert job.live_processes() == []


def test_node_zero_starting_last_still_forms_the_round(tmp_path):
    with Job(tmp_path, 3, "allreduce.py") as job:
        job.start([1, 2])
        time.sleep(2)
        job.start([0])
        assert job.wait() == {0: 0, 1: 0, 2: 0}
        assert "sum=6" in job.output(2)


def test_ipv6_main_address(tmp_path):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("IPv6 loopback is not available on this machine")
    with Job(tmp_path, 2, "allreduce.py", main_ip="::1") as job:
        job.start()
        assert job.wait() == {0: 0, 1: 0}
        assert "master=::1" in job.output(1)


def test_worker_failing_once_recovers_with_max_restarts(tmp_path):
    with Job(
        tmp_path, 2, "fail_once.py", [str(tmp_path)], nproc_per_node=2,
        torchrun_args=["--max-restarts=1"], env={"FAIL_RANK": "3"},
    ) as job:
        job.start()
        assert job.wait() == {0: 0, 1: 0}
        # every rank of the second round finished its all_reduce over the full world
        sums = [line for node in (0, 1) for line in lines_with(job.output(node), "sum=")]
        assert len(sums) == 4 and all("sum=4" in line for line in sums), sums
        assert (tmp_path / "failed-once").exists()


def test_rank_raising_stops_idle_node(tmp_path):
    with Job(tmp_path, 2, "raise_or_idle.py", rdzv_conf=FAST, env={"FAIL_RANK": "1"}) as job:
        job.start()
        # the idle rank would sleep 120 s: both nodes must stop long before
        codes = job.wait(timeout=45)
        assert codes[0] != 0 and codes[1] != 0
        node0 = job.output(0)
        # plain torchrun: our JobFailedError ends the agent's traceback
        assert "JobFailedError: node 1 failed first: global rank 1 (local rank 0) exited with code 1: " \
            "ValueError: rank failed on purpose" in node0, node0
        assert job.live_processes() == []


def test_control_rank_raising_stops_worker_node(tmp_path):
    with Job(tmp_path, 2, "raise_or_idle.py", rdzv_conf=FAST, env={"FAIL_RANK": "0"}) as job:
        job.start()
        codes = job.wait(timeout=45)
        assert codes[0] != 0 and codes[1] != 0
        assert "the control node (node 0) failed first" in job.output(1), job.output(1)


def test_peers_that_lost_the_failing_rank_name_the_root_cause(tmp_path):
    # node 0's rank fails in its all_reduce when node 1's rank dies; whichever
    # agent records first, both nodes must name node 1
    with Job(tmp_path, 2, "raise_in_collective.py", launcher="module", env={"FAIL_RANK": "1"}) as job:
        job.start()
        assert job.wait(timeout=60) == {0: 1, 1: 1}
        assert "Connection closed by peer" in job.output(0) or "Connection reset" in job.output(0)
        last_line = job.output(0).rstrip().splitlines()[-1]
        assert last_line.startswith("metaflow rendezvous: node 1 failed first:"), job.output(0)
        assert "ValueError: rank failed on purpose" in last_line


def test_node_that_finished_fails_when_another_node_fails_later(tmp_path):
    # node 0's worker ends at once and its agent waits in torch's exit barrier
    env = {"FAIL_RANK": "1", "FAIL_AFTER": "3", "IDLE_SECONDS": "0"}
    with Job(tmp_path, 2, "raise_or_idle.py", launcher="module", rdzv_conf=FAST, env=env) as job:
        job.start()
        codes = job.wait(timeout=45)
        assert codes == {0: 1, 1: 1}
        assert "metaflow rendezvous: node 1 failed first" in job.output(0), job.output(0)


def test_restart_after_another_node_finished_fails_at_once(tmp_path):
    # node 0's worker succeeds at once; node 1's fails later and, with a restart left,
    # asks for round 1, which node 0 (in torch's exit barrier) never joins
    env = {"FAIL_RANK": "1", "FAIL_AFTER": "3", "IDLE_SECONDS": "0"}
    with Job(tmp_path, 2, "raise_or_idle.py", launcher="module", torchrun_args=["--max-restarts=1"],
             rdzv_conf={**FAST, "join_timeout": 300}, env=env) as job:
        job.start()
        assert job.wait(timeout=60) == {0: 1, 1: 1}  # not join_timeout (300 s) later
        reason = ("its workers failed and it asked for a restart (round 1), but the workers of "
                  "node 0 had all finished by then")
        for node in (0, 1):
            assert f"node 1 failed first: RestartAfterFinishError: {reason}" in job.output(node), job.output(node)


# join_timeout leaves room for a slow start of node 2 on a busy machine: if node 0
# timed out before node 2 connected, node 2 would rightly report node 0 instead.
def test_node_that_never_arrives_is_named(tmp_path):
    with Job(tmp_path, 3, "allreduce.py", launcher="module", rdzv_conf={"join_timeout": 5}) as job:
        job.start([0, 2])
        codes = job.wait(timeout=60)
        assert codes == {0: 1, 2: 1}
        for node in (0, 2):
            assert "node 1 never arrived: JoinTimeoutError: round 0" in job.output(node), job.output(node)
            assert job.output(node).rstrip().endswith("missing nodes: 1"), job.output(node)


def test_control_node_that_never_arrives_is_named(tmp_path):
    with Job(tmp_path, 2, "allreduce.py", launcher="module", rdzv_conf={"join_timeout": 3}) as job:
        job.start([1])
        assert job.wait(timeout=60) == {1: 1}
        assert "the control node (node 0) never arrived: JoinTimeoutError" in job.output(1), job.output(1)
        assert "Node 0 hosts the store; it never came up." in job.output(1)
        assert job.output(1).rstrip().endswith("missing nodes: 0")


def test_two_agents_claiming_one_index_are_refused(tmp_path):
    with Job(tmp_path, 3, "allreduce.py", launcher="module", rdzv_conf={"join_timeout": 30}) as job:
        job.start([0, 1])
        time.sleep(1)
        job.start([2], env={"MF_PARALLEL_NODE_INDEX": "1"})
        codes = job.wait(timeout=60)
        assert all(code != 0 for code in codes.values()), codes
        assert "two agents claim node index 1" in job.output(0), job.output(0)


def test_sigterm_during_join_ends_the_agent(tmp_path):
    with Job(tmp_path, 2, "allreduce.py", launcher="module", rdzv_conf={"join_timeout": 120}) as job:
        job.start([0])
        # node 0 hosts the store right before it waits for node 1
        port = derive_port(job.run_id)
        assert wait_until_listening("127.0.0.1", port, time.monotonic() + 60), job.output(0)
        time.sleep(0.5)
        job.signal(0, signal.SIGTERM)
        # far inside join_timeout: the wait let the signal through
        assert job.wait(timeout=30) != {0: 0}


def test_killed_agent_is_detected_by_heartbeat(tmp_path):
    with Job(tmp_path, 3, "idle.py", rdzv_conf=FAST) as job:
        job.start()
        wait_for_output(job, [0, 1, 2], "started rank=")
        job.signal(2, signal.SIGKILL)
        codes = job.wait(timeout=60, nodes=[0, 1])
        assert codes[0] != 0 and codes[1] != 0
        assert "node 2 failed first: stopped sending heartbeats" in job.output(1), job.output(1)


def test_control_node_does_not_wait_at_close_for_a_killed_node(tmp_path):
    """Node 2's agent is SIGKILLed, then node 0's stopped (as a local run's launcher does once
    node 2's task failed) long before heartbeat_timeout: node 0 closes without waiting
    close_timeout for node 2, which will never close, and node 1 is told."""
    conf = {**FAST, "heartbeat_timeout": 300, "close_timeout": 300}
    with Job(tmp_path, 3, "idle.py", rdzv_conf=conf) as job:
        job.start()
        wait_for_output(job, [0, 1, 2], "started rank=")
        job.signal(2, signal.SIGKILL)
        time.sleep(4 * FAST["heartbeat_interval"])  # node 2 misses more than two beats
        job.signal(0, signal.SIGTERM)
        # Both far inside close_timeout and heartbeat_timeout (300 s each).
        codes = job.wait(timeout=60, nodes=[0, 1])
        assert codes[0] != 0 and codes[1] != 0
        assert "the control node (node 0) failed first: its torchrun agent exited" in job.output(1), job.output(1)


def test_killed_control_node_stops_the_others(tmp_path):
    with Job(tmp_path, 2, "idle.py", rdzv_conf=FAST) as job:
        job.start()
        wait_for_output(job, [0, 1], "started rank=")
        job.signal(0, signal.SIGKILL)
        assert job.wait(timeout=60, nodes=[1])[1] != 0
        assert "the control node (node 0) failed first: its rendezvous store at" in job.output(1), job.output(1)
        assert "is unreachable" in job.output(1)


def test_terminated_agent_tells_the_others(tmp_path):
    with Job(tmp_path, 2, "idle.py", rdzv_conf=FAST) as job:
        job.start()
        wait_for_output(job, [0, 1], "started rank=")
        job.signal(1, signal.SIGTERM)
        codes = job.wait(timeout=60)
        assert codes[0] != 0 and codes[1] != 0
        assert "node 1 failed first: its torchrun agent exited before the job finished" in job.output(0)
        assert job.live_processes() == []


def test_busy_port_on_node_zero(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with Job(
            tmp_path, 1, "allreduce.py", launcher="module",
            torchrun_args=[f"--rdzv-endpoint=127.0.0.1:{port}"],
        ) as job:
            job.start()
            assert job.wait(timeout=60) == {0: 1}
            out = job.output(0)
            assert f"StorePortInUseError: node 0 cannot host the rendezvous store: port {port} is already in use" in out
            assert "Traceback" not in out


@pytest.mark.parametrize(
    "env, torchrun_args, message",
    [
        ({"MF_PARALLEL_MAIN_IP": ""}, [], "TopologyError: MF_PARALLEL_MAIN_IP is not set"),
        ({"MF_PARALLEL_NODE_INDEX": "5"}, [], "MF_PARALLEL_NODE_INDEX=5 is out of range"),
        ({}, ["--nnodes=3"], "--nnodes=3, but this Metaflow step runs 2 nodes"),
        ({}, ["--rdzv-conf=join_timeout=never"], "ConfigError: --rdzv-conf join_timeout='never'"),
    ],
)
def test_bad_input_fails_with_a_message(tmp_path, env, torchrun_args, message):
    with Job(tmp_path, 2, "allreduce.py", launcher="module", torchrun_args=torchrun_args) as job:
        job.start([0], env=env)
        assert job.wait(timeout=60) == {0: 1}
        out = job.output(0)
        assert message in out, out
        assert "Traceback" not in out


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--max-restarts=-1", "max_restarts must be >= 0"),
        ("--monitor-interval=0", "--monitor-interval=0: must be a positive number of seconds"),
        ("--event-log-handler=bogus", "--event-log-handler='bogus' is unknown"),
    ],
)
def test_flags_torch_asserts_on_end_with_one_line(tmp_path, flag, message):
    # torch itself stops these with a bare AssertionError or KeyError, traceback and all
    with Job(tmp_path, 1, "allreduce.py", launcher="module", torchrun_args=[flag]) as job:
        job.start()
        assert job.wait(timeout=60) == {0: 2}
        out = job.output(0)
        assert f"metaflow rendezvous: bad torchrun arguments: {message}" in out, out
        assert "Traceback" not in out


def test_node_of_another_job_is_refused(tmp_path):
    port_arg = "--rdzv-endpoint=127.0.0.1:{}".format(free_port())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Job(tmp_path / "a", 2, "idle.py", torchrun_args=[port_arg], launcher="module") as ours, \
            Job(tmp_path / "b", 2, "idle.py", torchrun_args=[port_arg], launcher="module") as theirs:
        ours.start()
        wait_for_output(ours, [0, 1], "started rank=")
        theirs.start([1])
        assert theirs.wait(timeout=60) == {1: 1}
        assert f"belongs to job {ours.run_id!r}, not to {theirs.run_id!r}" in theirs.output(1)
        assert all(ours.procs[node].poll() is None for node in (0, 1)), "our job must go on"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def test_three_jobs_side_by_side_do_not_collide(tmp_path):
    jobs = []
    try:
        for name in "abc":
            (tmp_path / name).mkdir()
            jobs.append(Job(tmp_path / name, 2, "allreduce.py"))
        for job in jobs:
            job.start()
        for job in jobs:
            assert job.wait() == {0: 0, 1: 0}, job.output(0)
            assert "sum=3" in job.output(1)
        assert len({derive_port(job.run_id) for job in jobs}) == 3
    finally:
        for job in jobs:
            job.close()


CONF_STRINGS = st.lists(
    st.tuples(KEYS, st.sampled_from(["1", "30", "0", "-2", "x", "", "1e9", "inf"])), max_size=3
).map(lambda pairs: ",".join(f"{key}={value}" for key, value in pairs))


# No limit of this file's: eight launches, each bounded by its own timeout.
@pytest.mark.timeout(0)
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(conf=st.one_of(CONF_STRINGS, st.sampled_from(["join_timeout", ",,", "=5", "a=b=c"])))
def test_rdzv_conf_through_a_real_launch(conf, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("conf")
    env = {"MF_PARALLEL_NODE_INDEX": "0", "MF_PARALLEL_NUM_NODES": "1",
           "MF_PARALLEL_MAIN_IP": "127.0.0.1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rendezvous", "--rdzv-backend=metaflow", f"--rdzv-id=prop-{workdir.name}",
         f"--rdzv-conf={conf}", str(SCRIPTS / "allreduce.py")],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=90,
    )
    output = result.stdout + result.stderr
    if result.returncode == 0:
        assert "sum=1" in output
    else:
        assert "Traceback" not in output, output
        assert "metaflow rendezvous: " in output, output
