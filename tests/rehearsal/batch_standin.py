"""A stand-in for the AWS Batch API: container and multi-node jobs run as rehearsal pods.

Metaflow's Batch path stays real: ``batch step`` builds the job definition and the
job (``BatchJob``), submits it with its boto3 ``batch`` client and waits for it
(``Batch.wait``: job status through ``describe_jobs``, the task's logs from the
mflog files in S3). Only the HTTP answers of the Batch API are replaced: the
client Metaflow creates is a real boto3 client, whose ``before-send`` event is
answered here, so botocore still validates every request against the Batch API
model and parses every answer. S3 and everything else go where they always go.

What Batch does and the stand-in does too (from the AWS Batch user guide, "Multi-node
parallel jobs", "Job lifecycle for MNP jobs" and "Reserved environment variables"):

- one job queue ``QUEUE`` on one EC2 compute environment ``COMPUTE_ENVIRONMENT``;
  job definitions registered with revisions and found again by name;
- ``submit_job`` of a ``container`` job (what Metaflow submits for a step that is not
  ``@parallel``): one container, the job definition's container properties with the
  submission's container overrides on top (command replaced; environment merged by
  name), plus what Batch sets in every container: ``AWS_BATCH_JOB_ID``,
  ``AWS_BATCH_JOB_ATTEMPT``, ``AWS_BATCH_JQ_NAME``, ``AWS_BATCH_CE_NAME``, and ECS's
  ``AWS_EXECUTION_ENV``; the job succeeds or fails with its container, and
  ``describe_jobs`` describes it with its ``container`` (exit code, log stream) and
  no ``nodeProperties``;
- ``submit_job`` of a ``multinode`` job: each node's container is the job definition's
  node range properties for its index with the submission's node overrides on top,
  merged the same way, plus what Batch sets: the above (``AWS_BATCH_JOB_ID`` is
  ``<job id>#<node>``), ``AWS_BATCH_JOB_NODE_INDEX``, ``AWS_BATCH_JOB_NUM_NODES``,
  ``AWS_BATCH_JOB_MAIN_NODE_INDEX``, and on the other nodes
  ``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS``;
- the main node starts first and the others once it runs; a node that dies is left
  alone; the job ends when the main node exits, the others are then stopped, and the
  main node's exit decides SUCCEEDED or FAILED; ``<job id>#<n>`` describes node n;
- ``attemptDurationSeconds`` applies to the whole job; ``terminate_job`` stops it.

Each container's command runs exactly as the job gives it (``bash -c "..."``), as a pod
of ``cluster.start_pods`` (its own test host, hostname, empty working directory). Not
modelled: queues' scheduling and capacity, resources, retries (``retryStrategy``),
array jobs, Fargate, CloudWatch logs (Metaflow reads S3's).

For the test process the stand-in writes every job's state to
``<cluster state dir>/batch-jobs/<job id>.json`` (see ``job_records``).

``install()`` wraps Metaflow's ``get_aws_client`` once its module is imported, so
that only its ``batch`` clients get the stand-in; the rehearsal's ``sitecustomize``
calls it in Metaflow's processes when the cluster description lists ``"batch"``.
"""

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

QUEUE = "rehearsal-queue"
COMPUTE_ENVIRONMENT = "rehearsal-ec2"
ACCOUNT = "123456789012"
JOB_RECORDS_DIR = "batch-jobs"
_AWS_CLIENT_MODULE = "metaflow.plugins.aws.aws_client"
_POLL_SECONDS = 0.2


class BatchApiError(Exception):
    """A client error of the Batch API (HTTP 400, ``ClientException``)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _in_range(target_nodes: str, index: int) -> bool:
    """Whether node ``index`` is in a Batch node range such as ``0:0``, ``1:3``, ``2:`` or ``:``."""
    start, _, end = target_nodes.partition(":")
    if not _:
        return index == int(start)
    return (not start or int(start) <= index) and (not end or index <= int(end))


def node_container(definition: Dict[str, Any], request: Dict[str, Any],
                   index: int) -> Tuple[List[str], Dict[str, str]]:
    """Node ``index``'s command and environment, as Batch builds them for a submitted job.

    A container job's container properties with the submission's container
    overrides on top; for a multi-node job, the job definition's node range
    properties for the index with the submission's node property overrides for the
    index on top. An override's command replaces the definition's, its environment
    variables replace those of the same name.
    """
    if definition["type"] == "multinode":
        properties = [node_range["container"]
                      for node_range in definition["nodeProperties"]["nodeRangeProperties"]
                      if _in_range(node_range["targetNodes"], index)]
        overrides = [node_override.get("containerOverrides", {})
                     for node_override in request.get("nodeOverrides", {}).get(
                         "nodePropertyOverrides", [])
                     if _in_range(node_override["targetNodes"], index)]
    else:
        properties = [definition["containerProperties"]]
        overrides = [request.get("containerOverrides", {})]
    command: List[str] = []
    env: Dict[str, str] = {}
    for container in properties:
        command = list(container.get("command", command))
        env.update({e["name"]: e["value"] for e in container.get("environment", [])})
    for container in overrides:
        command = list(container.get("command") or command)
        env.update({e["name"]: e["value"] for e in container.get("environment", [])})
    return command, env


class _Job:
    """One submitted job, container or multi-node: its pods and the status Batch would report."""

    def __init__(self, api: "BatchApi", job_id: str, request: Dict[str, Any],
                 definition: Dict[str, Any]) -> None:
        self.api = api
        self.id = job_id
        self.request = request
        self.definition = definition
        self.multinode = definition["type"] == "multinode"
        # A container job is one container: node 0, its own main node, in what follows.
        self.num_nodes = int(definition["nodeProperties"]["numNodes"]) if self.multinode else 1
        self.main = int(definition["nodeProperties"]["mainNode"]) if self.multinode else 0
        self.created_at = _now_ms()
        self.started_at: Optional[int] = None
        self.stopped_at: Optional[int] = None
        self.status = "SUBMITTED"
        self.status_reason: Optional[str] = None
        self.pods: Dict[int, Any] = {}
        self.hostnames = {index: ("batch-%s-node%d" % (job_id[:8], index) if self.multinode
                                  else "batch-%s" % job_id[:8])
                          for index in range(self.num_nodes)}
        self.node_stopped_at: Dict[int, int] = {}
        self.node_exit: Dict[int, Optional[int]] = {}
        self.lock = threading.RLock()

    def node_env(self, index: int, main_address: Optional[str]) -> Tuple[List[str], Dict[str, str]]:
        command, env = node_container(self.definition, self.request, index)
        env.update({
            "AWS_BATCH_JOB_ID": "%s#%d" % (self.id, index) if self.multinode else self.id,
            "AWS_BATCH_JOB_ATTEMPT": "1",
            "AWS_BATCH_JQ_NAME": QUEUE,
            "AWS_BATCH_CE_NAME": COMPUTE_ENVIRONMENT,
            "AWS_EXECUTION_ENV": "AWS_ECS_EC2",
        })
        if self.multinode:
            env.update({
                "AWS_BATCH_JOB_NODE_INDEX": str(index),
                "AWS_BATCH_JOB_NUM_NODES": str(self.num_nodes),
                "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(self.main),
            })
            if index != self.main:
                env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = main_address or ""
        return command, env

    def start(self) -> None:
        """Start the main node (a container job's one container), then the others; then
        watch the job to its end."""
        from tests.rehearsal import cluster

        def spec(index: int, main_address: Optional[str]) -> Any:
            command, env = self.node_env(index, main_address)
            return cluster.PodSpec(name=self.hostnames[index], hostname=self.hostnames[index],
                                   command=command, env=env)

        with self.lock:
            self.status = "STARTING"
            (main_pod,) = cluster.start_pods([spec(self.main, None)])
            self.pods[self.main] = main_pod
            self.status, self.started_at = "RUNNING", _now_ms()
            others = [i for i in range(self.num_nodes) if i != self.main]
            if others:
                for index, pod in zip(others, cluster.start_pods(
                        [spec(i, main_pod.address) for i in others])):
                    self.pods[index] = pod
            self.api.save_record(self)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            with self.lock:
                self._update()
                if self.stopped_at is not None:
                    return
            time.sleep(_POLL_SECONDS)

    def _update(self) -> None:
        """Note the nodes that exited; end the job when the main node did or time ran out."""
        if self.stopped_at is not None:
            return
        self._collect_exits()
        timeout = self.request.get("timeout", {}).get("attemptDurationSeconds")
        if self.main in self.node_exit:
            self._finish("SUCCEEDED" if self.node_exit[self.main] == 0 else "FAILED",
                         "Essential container in task exited")
        elif timeout and _now_ms() - (self.started_at or self.created_at) > timeout * 1000:
            self._finish("FAILED", "Job attempt duration exceeded timeout")

    def _collect_exits(self) -> None:
        changed = False
        for index, pod in self.pods.items():
            if index not in self.node_exit:
                code = pod.poll()
                if code is not None:
                    self.node_exit[index] = code
                    self.node_stopped_at[index] = _now_ms()
                    changed = True
        if changed:
            self.api.save_record(self)

    def _finish(self, status: str, reason: str) -> None:
        """End the job: kill the nodes still running, as Batch does once the main node exits."""
        for pod in self.pods.values():
            if pod.poll() is None:
                pod.kill()
                pod.wait(10)
        self._collect_exits()
        self.status, self.status_reason, self.stopped_at = status, reason, _now_ms()
        self.api.save_record(self)

    def terminate(self, reason: str) -> None:
        with self.lock:
            if self.stopped_at is None:
                self._finish("FAILED", reason)

    def node_status(self, index: int) -> str:
        if index in self.node_exit:
            return "SUCCEEDED" if self.node_exit[index] == 0 else "FAILED"
        if index in self.pods:
            return "RUNNING" if self.stopped_at is None else "FAILED"
        return self.status if self.status != "RUNNING" else "STARTING"

    def describe(self, node: Optional[int]) -> Dict[str, Any]:
        """The ``describe_jobs`` entry of the job (a container job's with its ``container``,
        a multi-node job's with its ``nodeProperties``), or of one node (``<job id>#<node>``)."""
        with self.lock:
            self._update()
            index = self.main if node is None else node
            container = {"exitCode": self.node_exit.get(index),
                         "logStreamName": "%s/default/%s" % (self.request["jobName"], self.id)}
            container = {k: v for k, v in container.items() if v is not None}
            stopped = self.stopped_at if node is None else self.node_stopped_at.get(index)
            entry: Dict[str, Any] = {
                "jobArn": "arn:aws:batch:%s:%s:job/%s" % (self.api.region, ACCOUNT, self.id),
                "jobName": self.request["jobName"],
                "jobId": self.id if node is None else "%s#%d" % (self.id, node),
                "jobQueue": "arn:aws:batch:%s:%s:job-queue/%s" % (self.api.region, ACCOUNT, QUEUE),
                "status": self.status if node is None else self.node_status(node),
                "createdAt": self.created_at,
                "jobDefinition": self.definition["jobDefinitionArn"],
                "parameters": self.request.get("parameters", {}),
                "tags": self.request.get("tags", {}),
                "timeout": self.request.get("timeout", {}),
                "attempts": [],
            }
            if not self.multinode:
                entry["container"] = container
            elif node is None:
                entry["nodeProperties"] = dict(self.definition["nodeProperties"])
            else:
                entry["nodeDetails"] = {"nodeIndex": node, "isMainNode": node == self.main}
            if self.started_at is not None:
                entry["startedAt"] = self.started_at
            if stopped is not None:
                entry["stoppedAt"] = stopped
                entry["attempts"] = [{"container": container, "startedAt": self.started_at,
                                      "stoppedAt": stopped,
                                      "statusReason": self.status_reason
                                      or "Essential container in task exited"}]
            if node is None and self.status_reason is not None:
                entry["statusReason"] = self.status_reason
            return entry

    def record(self) -> Dict[str, Any]:
        return {"jobId": self.id, "jobName": self.request["jobName"], "createdAt": self.created_at,
                "type": self.definition["type"],
                "parameters": self.request.get("parameters", {}),
                "status": self.status, "statusReason": self.status_reason,
                "numNodes": self.num_nodes,
                "nodes": {str(index): {"hostname": self.hostnames[index], "address": pod.address,
                                       "log_path": str(pod.log_path),
                                       "exit_code": self.node_exit.get(index),
                                       "command": pod.spec.command}
                          for index, pod in self.pods.items()}}


class BatchApi:
    """The Batch operations Metaflow calls, on the API's request and response dicts.

    Each method is named after its operation (``SubmitJob``), as botocore names the
    request; an operation without a method is answered with a ``ClientException``.
    """

    def __init__(self, region: str, records_dir: Optional[Path]) -> None:
        self.region = region
        self.records_dir = records_dir
        self.definitions: Dict[str, List[Dict[str, Any]]] = {}
        self.jobs: Dict[str, _Job] = {}

    def save_record(self, job: _Job) -> None:
        if self.records_dir is not None:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            temp = self.records_dir / (job.id + ".tmp")
            temp.write_text(json.dumps(job.record(), indent=1))
            temp.replace(self.records_dir / (job.id + ".json"))

    def _queue(self) -> Dict[str, Any]:
        return {"jobQueueName": QUEUE, "state": "ENABLED", "status": "VALID", "priority": 1,
                "jobQueueArn": "arn:aws:batch:%s:%s:job-queue/%s" % (self.region, ACCOUNT, QUEUE),
                "computeEnvironmentOrder": [{"order": 1, "computeEnvironment":
                                             "arn:aws:batch:%s:%s:compute-environment/%s"
                                             % (self.region, ACCOUNT, COMPUTE_ENVIRONMENT)}]}

    def DescribeJobQueues(self, request: Dict[str, Any]) -> Dict[str, Any]:
        wanted = request.get("jobQueues")
        queue = self._queue()
        match = not wanted or any(name in (QUEUE, queue["jobQueueArn"]) for name in wanted)
        return {"jobQueues": [queue] if match else []}

    def DescribeComputeEnvironments(self, request: Dict[str, Any]) -> Dict[str, Any]:
        arn = "arn:aws:batch:%s:%s:compute-environment/%s" % (self.region, ACCOUNT,
                                                              COMPUTE_ENVIRONMENT)
        wanted = request.get("computeEnvironments")
        if wanted and not any(name in (COMPUTE_ENVIRONMENT, arn) for name in wanted):
            return {"computeEnvironments": []}
        return {"computeEnvironments": [{
            "computeEnvironmentName": COMPUTE_ENVIRONMENT, "computeEnvironmentArn": arn,
            "type": "MANAGED", "state": "ENABLED", "status": "VALID",
            "computeResources": {"type": "EC2", "minvCpus": 0, "maxvCpus": 256,
                                 "instanceTypes": ["optimal"], "subnets": ["subnet-rehearsal"]}}]}

    def DescribeJobDefinitions(self, request: Dict[str, Any]) -> Dict[str, Any]:
        found = self.definitions.get(request.get("jobDefinitionName", ""), [])
        status = request.get("status")
        return {"jobDefinitions": [d for d in found if not status or d["status"] == status]}

    def RegisterJobDefinition(self, request: Dict[str, Any]) -> Dict[str, Any]:
        name = request["jobDefinitionName"]
        revisions = self.definitions.setdefault(name, [])
        revision = len(revisions) + 1
        arn = "arn:aws:batch:%s:%s:job-definition/%s:%d" % (self.region, ACCOUNT, name, revision)
        revisions.append(dict(request, revision=revision, jobDefinitionArn=arn, status="ACTIVE"))
        return {"jobDefinitionName": name, "jobDefinitionArn": arn, "revision": revision}

    def _definition(self, reference: str) -> Dict[str, Any]:
        for revisions in self.definitions.values():
            for definition in revisions:
                name_revision = "%s:%d" % (definition["jobDefinitionName"], definition["revision"])
                if reference in (definition["jobDefinitionArn"], name_revision):
                    return definition
        if reference in self.definitions:
            return self.definitions[reference][-1]
        raise BatchApiError("Job definition %s not found" % reference)

    def SubmitJob(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if request["jobQueue"] not in (QUEUE, self._queue()["jobQueueArn"]):
            raise BatchApiError("Job queue %s not found" % request["jobQueue"])
        definition = self._definition(request["jobDefinition"])
        if definition["type"] not in ("container", "multinode"):
            raise BatchApiError("the rehearsal runs container and multi-node jobs only, not %s"
                                % definition["type"])
        job = _Job(self, str(uuid.uuid4()), request, definition)
        self.jobs[job.id] = job
        job.start()
        return {"jobName": request["jobName"], "jobId": job.id,
                "jobArn": "arn:aws:batch:%s:%s:job/%s" % (self.region, ACCOUNT, job.id)}

    def DescribeJobs(self, request: Dict[str, Any]) -> Dict[str, Any]:
        described = []
        for job_id in request["jobs"]:
            base, _, node = job_id.partition("#")
            if base in self.jobs:
                described.append(self.jobs[base].describe(int(node) if node else None))
        return {"jobs": described}

    def TerminateJob(self, request: Dict[str, Any]) -> Dict[str, Any]:
        job = self.jobs.get(request["jobId"])
        if job is None:
            raise BatchApiError("Job %s not found" % request["jobId"])
        job.terminate(request["reason"])
        return {}

    def ListJobs(self, request: Dict[str, Any]) -> Dict[str, Any]:
        wanted = request.get("jobStatus", "RUNNING")
        return {"jobSummaryList": [
            {"jobId": job.id, "jobName": job.request["jobName"], "status": job.status,
             "createdAt": job.created_at}
            for job in self.jobs.values() if job.status == wanted]}


class _Body:
    """The raw body of an answer, as botocore reads it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


def answer_requests(client: Any, api: BatchApi) -> None:
    """Make ``client`` (a boto3 ``batch`` client) get its answers from ``api``, not from AWS."""
    from botocore.awsrequest import AWSResponse

    def before_send(request: Any, event_name: str, **_: Any) -> AWSResponse:
        operation = event_name.rsplit(".", 1)[-1]
        body = json.loads(request.body or b"{}")
        headers = {"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())}
        handler: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = getattr(api, operation,
                                                                                 None)
        try:
            if handler is None:
                raise BatchApiError("the rehearsal's Batch stand-in does not answer %s" % operation)
            status, answer = 200, handler(body)
        except BatchApiError as error:
            status, answer = 400, {"__type": "ClientException", "message": str(error)}
            headers["x-amzn-ErrorType"] = "ClientException"
        return AWSResponse(request.url, status, headers, _Body(json.dumps(answer).encode()))

    client.meta.events.register("before-send.batch", before_send)


def _wrap_get_aws_client(module: Any) -> None:
    """Wrap Metaflow's ``get_aws_client`` so that its ``batch`` clients are answered here."""
    from tests.rehearsal import cluster

    original = module.get_aws_client
    state_dir = cluster.state_dir()
    api_by_region: Dict[str, BatchApi] = {}

    def get_aws_client(service: str, *args: Any, **kwargs: Any) -> Any:
        client = original(service, *args, **kwargs)
        if service == "batch":
            result = client[0] if isinstance(client, tuple) else client
            region = result.meta.region_name or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
            api = api_by_region.setdefault(region, BatchApi(region, state_dir / JOB_RECORDS_DIR))
            answer_requests(result, api)
        return client

    module.get_aws_client = get_aws_client


def install() -> None:
    """Route the ``batch`` clients Metaflow creates in this process to the stand-in."""
    from tests.rehearsal import cluster

    cluster.call_when_imported(_AWS_CLIENT_MODULE, _wrap_get_aws_client)


def job_records(state_dir: Path) -> List[Dict[str, Any]]:
    """The jobs the stand-in ran for a cluster, as it last wrote them, oldest first.

    Each: ``jobId``, ``jobName``, ``createdAt``, ``type`` (the job definition's:
    ``container`` or ``multinode``), ``parameters`` (Metaflow's ``metaflow.run_id``,
    ``metaflow.step_name``, ``metaflow.task_id``, ...), ``status``, ``statusReason``,
    ``numNodes`` (1 for a container job) and ``nodes``: node index (a string; ``"0"``, the
    one container, for a container job) -> ``hostname``, ``address``, ``log_path``,
    ``exit_code`` (None while running) and ``command``.
    """
    directory = state_dir / JOB_RECORDS_DIR
    if not directory.is_dir():
        return []
    records = [json.loads(path.read_text()) for path in directory.glob("*.json")]
    return sorted(records, key=lambda record: record["createdAt"])
