"""Argo Workflows rehearsal: a compiled @torchrun flow's DAG run with pods as processes.

``python flow.py argo-workflows create --only-json`` compiles the flow and uploads
its code package to S3 for real; ``tests.rehearsal.argo`` then runs the workflow's
templates in DAG order as a controller would: the start step's container, the
parallel step's JobSet (through ``tests.rehearsal.kubernetes_standin``) with its
parameters substituted, then the join and end containers.
"""

import re

import pytest

from tests.harness.netns_hosts import unavailable_reason
from tests.rehearsal.argo import compiled_template, run_workflow, substitute
from tests.rehearsal.cluster import Cluster

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.remote,
    pytest.mark.timeout(900),  # the first test may build the pod environment
    pytest.mark.skipif(REASON is not None, reason=f"no test hosts: {REASON}"),
]


@pytest.fixture
def cluster(pod_python_env, tmp_path):
    with Cluster(tmp_path, pod_python_env) as made:
        yield made
        made.assert_nothing_left()


def test_substitution_of_metaflows_expressions():
    scope = {"inputs.parameters.num-parallel": "3", "inputs.parameters.workerCount": "2",
             "workflow.parameters.fail_rank": "-1", "workflow.name": "w"}
    assert substitute("{{=sprig.int(sprig.sub(sprig.int(inputs.parameters['num-parallel']),1))}}",
                      scope) == "2"
    assert substitute("replicas: {{=asInt(inputs.parameters.workerCount)}}", scope) == "replicas: 2"
    assert substitute("{{=toBase64(workflow.parameters['fail_rank'])}}", scope) == "LTE="
    assert substitute({"a": ["argo-{{workflow.name}}"]}, scope) == {"a": ["argo-w"]}


def test_parallel_step_through_argo(cluster):
    compiled = cluster.run_flow("remote_training.py", command=("argo-workflows", "create", "--only-json"))
    assert compiled.returncode == 0, compiled.output[-6000:]
    result = run_workflow(cluster, compiled_template(compiled.output), {})
    assert result["error"] is None, (result, cluster.pod_logs())
    # Every step ran as pods: start, the JobSet's control and worker, join, end.
    ran = [(pod["template"], pod["exit_code"]) for pod in result["pods"]]
    assert ran == [("start", 0), ("train", 0), ("train", 0), ("join", 0), ("end", 0)], ran
    logs = cluster.pod_logs()
    train = "\n".join(text for name, text in logs.items() if name.startswith("js-"))
    ranks = sorted(int(rank) for rank in re.findall(r"WORKER rank=(\d) world=2 ", train))
    assert ranks == [0, 1], train
    join = "\n".join(text for name, text in logs.items() if "-join-" in name)
    assert "JOINED nodes=[0, 1]" in join, join
