"""Kubernetes rehearsal: @torchrun steps through Metaflow's real @kubernetes path.

``python flow.py run`` runs on the laptop test host; Metaflow builds each Job and
JobSet and uploads the code package to S3 (a test server) for real, and
``tests.rehearsal.kubernetes_standin`` runs each pod's container command, exactly as the
manifest gives it, in a test host of its own (see ``rehearsal/__init__.py`` for what
this cannot show). One run per case family, to keep the time down:

- the inherited flow (its @torchrun step in a base class of another module) with
  ``@kubernetes(gpu=2, port=P)``: two processes per node, the store on P;
- a flow with no compute decorator, run with ``--with kubernetes``: start, join and
  end each run in the pod of a Job, train (two nodes x one process) as a JobSet whose
  control pod starts late; the join sees both nodes, and ``rendezvous`` comes from the
  code package;
- with a metadata service and a card, a rank raising on the worker pod: node 0's card,
  refreshed on its pod and read from S3 on the laptop, shows both ranks running while
  they wait; then the run fails, naming the rank, and the card names it too;
- @retry: a rank raises in attempt 0, attempt 1 succeeds on both pods;
- @timeout(seconds=60): the ranks idle, every pod stops within the timeout and 15 s.
"""

import json
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from tests.harness.cards import find_card, rank_row
from tests.harness.flow_runs import FlowRun
from tests.harness.netns_hosts import unavailable_reason
from tests.rehearsal.cluster import Cluster, remote_task_lines
from tests.rehearsal.kubernetes_standin import expand
from tests.flows.remote_base import RENDEZVOUS_PORT

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.remote,
    pytest.mark.timeout(900),  # the first test may build the pod environment
    pytest.mark.skipif(REASON is not None, reason=f"no test hosts: {REASON}"),
]
LATE_CONTROL_SECONDS = 4
# What Metaflow names a task's job in front of its lines: the pod of a Job (generateName
# "t-<8 hex>-", then the Job's and the pod's random suffixes), the control pod of a JobSet.
JOB_POD = re.compile(r"pod (t-[0-9a-f]{8}-[0-9a-z]{5}-[0-9a-z]{5})")
JOBSET_CONTROL_POD = re.compile(r"pod (js-[0-9a-f]+-control-0-0-[0-9a-z]{5})")
# @timeout(seconds=...) of tests/flows/remote_timeout.py
TIMEOUT_SECONDS = 60
TRAIN_TASKS = "RemoteTrainingFlow/latest/train"
WORKER_LINE = re.compile(r"WORKER rank=(\d+) world=(\d+) local_world=(\d+) master_port=(\d+) "
                         r"host=(\S+) sum=(\S+)")


@pytest.fixture(scope="module")
def cluster(pod_python_env, tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("kubernetes"), pod_python_env) as made:
        yield made


@pytest.fixture
def clean_cluster(cluster):
    """The cluster; the test fails if its flow run leaves a process behind."""
    yield cluster
    cluster.assert_nothing_left()


def worker_lines(text: str):
    """``{rank: (world, local world, MASTER_PORT, hostname)}`` of the WORKER lines in ``text``."""
    return {int(m[1]): (int(m[2]), int(m[3]), int(m[4]), m[5]) for m in WORKER_LINE.finditer(text)}


def jobset_logs(cluster: Cluster, run: FlowRun) -> Dict[str, str]:
    """``{pod name: output}`` of the pods of the run's JobSets."""
    jobsets = set(re.findall(r"\[pod (js-[0-9a-f]+)-control-0-0-", run.output))
    assert jobsets, run.output[-6000:]
    return {name: text for name, text in cluster.pod_logs().items()
            if name.rsplit("-", 4)[0] in jobsets}


@contextmanager
def removed_after(path: Path) -> Iterator[Path]:
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_the_pod_environment_lacks_metaflow_torchrun(pod_python_env):
    probe = subprocess.run(
        [str(pod_python_env / "bin" / "python"), "-c",
         "import importlib.util as u, importlib.metadata as m; "
         "print(u.find_spec('rendezvous'), u.find_spec('metaflow_extensions'), "
         "[e.name for e in m.entry_points(group='torchrun.handlers')]); "
         "import torch, metaflow; print(torch.__version__, metaflow.__version__)"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd="/",
    )
    assert probe.returncode == 0, probe.stderr
    absent, versions = probe.stdout.splitlines()
    assert absent == "None None []"
    assert versions.startswith("2.13.0")


def test_kubernetes_expansion_follows_kubernetes():
    known = {"A": "1", "B": "$(A)"}.get
    assert expand("$(A)-$(B)-$(C)-$(pwd)", known) == "1-$(A)-$(C)-$(pwd)"
    assert expand("$$(A) $$ $x $( $(A", known) == "$(A) $ $x $( $(A"


def test_inherited_step_with_gpus_and_port(clean_cluster):
    run = clean_cluster.run_flow("remote_inherited.py")
    assert run.returncode == 0, run.output[-6000:]
    assert "JOINED nodes=[0, 1]" in run.task_lines("join")
    logs = jobset_logs(clean_cluster, run)
    assert len(logs) == 2, list(logs)
    workers = worker_lines("\n".join(logs.values()))
    # @kubernetes(gpu=2): two processes on each node; port=P: the store and MASTER_PORT on P.
    assert sorted(workers) == [0, 1, 2, 3], logs
    assert all(world == 4 and local == 2 and port == RENDEZVOUS_PORT
               for world, local, port, _ in workers.values()), workers
    pods = {rank: host.split(".")[0].rsplit("-", 3)[1] for rank, (*_, host) in workers.items()}
    assert pods == {0: "control", 1: "control", 2: "worker", 3: "worker"}, workers
    # a function entrypoint of the flow's neighbour module, run on the pods: each node
    # returns its own ranks' values, rank 0's is result.value on node 0
    returned = {}
    for line in run.task_lines("join"):
        if line.startswith("RETURNED "):
            node, value, values = re.fullmatch(r"RETURNED node=(\d) value=(.*) values=(.*)", line).groups()
            returned[int(node)] = (json.loads(value), json.loads(values))
    hosts = {rank: host.split(".")[0] for rank, (*_, host) in workers.items()}
    for node in (0, 1):
        value, values = returned[node]
        assert values == {str(rank): {"rank": 1000 + rank, "host": hosts[rank]}
                          for rank in (2 * node, 2 * node + 1)}, returned
        assert value == (values["0"] if node == 0 else None)


def test_with_kubernetes_on_the_command_line_and_a_late_control_pod(clean_cluster):
    """``run --with kubernetes`` of a flow with no compute decorator: every step runs on
    the cluster, the @torchrun step as a JobSet whose control pod starts after its worker."""
    run = clean_cluster.run_flow("remote_plain.py", "--with", "kubernetes",
                                 control_start_delay=LATE_CONTROL_SECONDS)
    assert run.returncode == 0, run.output[-6000:]
    # start, join and end each ran in the pod of a Job, train in the JobSet's control pod
    # (whose `kubernetes step` tails the control task) and its worker pod.
    tasks = {step: remote_task_lines(run, step) for step in ("start", "train", "join", "end")}
    pods = clean_cluster.pod_logs()
    for step, kind in (("start", JOB_POD), ("train", JOBSET_CONTROL_POD), ("join", JOB_POD),
                       ("end", JOB_POD)):
        (job,) = tasks[step]
        pod = kind.fullmatch(job)
        assert pod and pod[1] in pods, (step, job, list(pods))
    (join,) = tasks["join"].values()
    assert "JOINED nodes=[0, 1]" in join, join
    logs = jobset_logs(clean_cluster, run)
    workers = worker_lines("\n".join(logs.values()))
    assert sorted(workers) == [0, 1] and all(w[:2] == (2, 1) for w in workers.values()), logs
    # The package the pods import is the code package's: the pod environment has none.
    nodes = re.findall(r"NODE (\d) python=(\S+) rendezvous=(\S+) exit_code=0",
                       "\n".join(logs.values()))
    assert sorted(node for node, _, _ in nodes) == ["0", "1"], logs
    for _, python, rendezvous_file in nodes:
        assert python.startswith(str(clean_cluster.pod_env)), python
        assert rendezvous_file.endswith("/work/metaflow/.mf_code/rendezvous/__init__.py")
    # The worker pod started first, and waited for the control's name to resolve.
    started = {name.rsplit("-", 4)[1]: clean_cluster.pod_started(name) for name in logs}
    assert started["control"] - started["worker"] >= LATE_CONTROL_SECONDS - 0.5, started


def test_rank_raising_on_a_worker_pod_with_a_live_card(clean_cluster):
    """Node 0's card, refreshed on its pod, reaches the laptop through S3 while the ranks
    wait; then rank 1 (the other pod) raises: the run fails, the control pod names the
    rank and its error by itself, and the failed task's card names them too.

    With a metadata service: the laptop's client finds a running task through it. Without
    one, Metaflow 2.19.39's card subprocess on a pod cannot find its own task ("Task ...
    does not exist"), for a plain @parallel step too, and no card is saved.
    """
    # Pods have a /tmp of their own; /dev/shm is the machine's.
    release = Path("/dev/shm") / f"{clean_cluster.marker}-release"
    running = [rank_row(rank, 0, rank, "running") for rank in (0, 1)]
    seen: Dict[str, Any] = {}
    metadata: Dict[str, str] = {}

    def watch_then_release() -> None:
        try:
            seen["texts"] = clean_cluster.read_cards(TRAIN_TASKS, metadata, want=running, timeout=90)
            seen["at"] = time.time()
        finally:
            release.touch()  # the ranks wait for it

    with clean_cluster.metadata_service() as url, removed_after(release):
        metadata.update(METAFLOW_DEFAULT_METADATA="service", METAFLOW_SERVICE_URL=url)
        watcher = threading.Thread(target=watch_then_release, daemon=True)
        watcher.start()
        run = clean_cluster.run_flow("remote_training.py", "--release_file", str(release),
                                     "--fail_rank", "1", env=metadata)
        watcher.join(timeout=60)
        assert run.returncode != 0, run.output[-6000:]
        assert not run.task_lines("join")
        # The control pod fails by itself, naming the rank that raised on the other pod
        # and its error; the user sees that in the run's output.
        logs = jobset_logs(clean_cluster, run)
        control = next(text for name, text in logs.items() if "-control-" in name)
        assert re.search(r"global rank 1 \(local rank 0\) exited with code 1: "
                         r"RuntimeError: rank 1 failed on purpose", control), control
        assert "step train[0]" in control and "failed" in control, control
        train = "\n".join(run.task_lines("train"))
        assert "global rank 1" in train and "RuntimeError: rank 1 failed on purpose" in train
        live = find_card(seen["texts"], *running)
        assert "**Job running**" in live, live
        # How late the live view is: from the later rank's start (its worker's line) to the
        # laptop's client holding a card that shows both running.
        waiting = re.findall(r"WAITING rank=\d at=([0-9.]+)", "\n".join(logs.values()))
        assert len(waiting) == 2, waiting
        print(f"LIVE CARD: both ranks seen running on the laptop "
              f"{seen['at'] - max(map(float, waiting)):.1f} s after the later one started")
        final = find_card(clean_cluster.read_cards(TRAIN_TASKS, metadata), "| 0 | 0 | 0 |")
    assert rank_row(1, 0, 1, "failed") + " 1 |" in final, final
    # Rank 0 failed too (gloo: connection closed by peer), or was stopped by its agent.
    assert rank_row(0, 0, 0, "failed") in final or rank_row(0, 0, 0, "stopped") in final, final
    assert "**global rank 1 on node 1 (local rank 0), exit 1** failed first" in final, final
    assert "RuntimeError: rank 1 failed on purpose" in final, final


def test_retry_runs_the_next_attempt_on_every_pod(clean_cluster):
    """Rank 1 raises in attempt 0; @retry runs attempt 1 on both pods, with a rendezvous of
    its own."""
    run = clean_cluster.run_flow("remote_decorators.py")
    assert run.returncode == 0, run.output[-6000:]
    assert "JOINED nodes=[0, 1]" in run.task_lines("join")
    assert "RuntimeError: planned failure in attempt 0" in run.output, run.output[-4000:]
    # Two JobSets, one per attempt; each pod's own log has its node's RESULT.
    logs = jobset_logs(clean_cluster, run)
    assert len(logs) == 4, list(logs)
    pods = "\n".join(logs.values())
    for node in (0, 1):
        assert re.search(rf"RESULT node={node} attempt=1 log_dir=\S+-a1-c1/node-{node}", pods), pods[-4000:]
        assert f"RESULT node={node} attempt=0" not in pods


def test_timeout_stops_the_job_on_every_pod(clean_cluster):
    run = clean_cluster.run_flow("remote_timeout.py")
    assert run.returncode != 0
    logs = jobset_logs(clean_cluster, run)
    assert len(logs) == 2, list(logs)
    for name, text in logs.items():
        # Each pod's task says why it stopped: its own @timeout, or the other pod's.
        assert re.search(r"node \d failed first: its step was interrupted: TimeoutException: "
                         r"Step train timed out after", text), (name, text[-4000:])
        # From the step's start to the pod's end: the timeout, and every process of the pod
        # stopped within 15 s more (the step starts after @timeout's clock does).
        step_started = float(re.search(r"STEP STARTED at=([0-9.]+)", text).group(1))
        stopped_after = clean_cluster.pod_ended(name) - step_started
        print(f"TIMEOUT: pod {name.rsplit('-', 4)[1]} ended {stopped_after:.1f} s after its step started")
        assert stopped_after < TIMEOUT_SECONDS + 15, (name, stopped_after)
