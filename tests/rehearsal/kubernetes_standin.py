"""A stand-in for a Kubernetes cluster with the JobSet controller: Jobs and JobSets run as pods.

Metaflow's ``kubernetes step`` stays real: it builds the Job (``KubernetesJob``) of a
step, or the JobSet (``KubernetesJobSet``) of a ``@parallel`` step, whose manifest
(``KubernetesJob.create()``'s V1Job, serialized as the Kubernetes client sends it;
the JobSet's ``dump()``) this module reads, and waits for it with its own loop
(``Kubernetes.wait``: status from the object ``execute`` returns, the task's logs
from the mflog files in S3). Only ``KubernetesJob.execute`` and
``KubernetesJobSet.execute``, which would send the manifest to the cluster, are
replaced.

What the cluster does and the stand-in does too:

- a Job (``generateName``, one completion) is named ``<generateName><random>`` and
  runs one pod named ``<job>-<random>``, hostname the pod's name, its metadata the
  template's labels and annotations plus the Job controller's labels
  (``batch.kubernetes.io/job-name``, ``controller-uid``, ...); the Job succeeds or
  fails with its pod, and its failure reason is its container's (``Error`` and the
  exit code; 128 + the signal for a pod killed by one);
- each replicated job of the JobSet becomes ``replicas`` Jobs named
  ``<jobset>-<replicated job>-<job index>``, each with one pod (an indexed Job of one
  completion) named ``<job>-0-<random>``, hostname ``<job>-0``, and, under the pod
  spec's ``subdomain`` with ``setHostnameAsFQDN``, the FQDN
  ``<job>-0.<subdomain>.<namespace>.svc.cluster.local`` as its hostname;
- the pod's metadata carries the template's labels and annotations plus the JobSet
  controller's (``jobset.sigs.k8s.io/jobset-name``, ``replicatedjob-name``,
  ``job-index``, ``restart-attempt``, ...);
- the container's environment is built in order: ``value`` with ``$(VAR)``
  references to the variables before it expanded, ``valueFrom.fieldRef`` read from the
  pod (``metadata.name``, ``metadata.namespace``, ``metadata.uid``,
  ``metadata.annotations['...']``, ``metadata.labels['...']``,
  ``spec.serviceAccountName``, ``spec.nodeName``, ``status.hostIP``, ``status.podIP``);
  then ``command`` and ``args`` are expanded with that environment, as Kubernetes does
  (``expand``);
- the pods start in the order of the replicated jobs (control first), which startup
  policy ``InOrder`` asks for and no startup policy allows;
- the JobSet succeeds when every pod has, and fails when one pod has failed (no
  failure policy, so no restarts): the failure shows in its status no sooner than
  ``STATUS_DELAY_SECONDS`` after the pod ended, as the controllers pass it on, and
  the other pods are then stopped. A cluster stops a pod with SIGTERM and a grace
  period (30 s by default) before SIGKILL, time in which a control pod names the
  failure and saves its logs; the stand-in stops a pod with SIGKILL at once, so it
  waits for that event instead of a time: a control pod that has started is left to
  end by itself first (for at most ``CONTROL_END_TIMEOUT_SECONDS``, which only a
  control pod that never ends meets). The rehearsal then holds whatever the
  machine's speed.

The test may hold the control pod back (``control_start_delay`` in the cluster
description): a control pod that starts after its workers, as a slow image pull or
a later node would make it. Not modelled: scheduling and resources, images,
``envFrom`` secrets, the pods' volumes, ``activeDeadlineSeconds``, the Job's
``backoffLimit`` and restarts of the JobSet, the API server.
"""

import atexit
import re
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

_JOBSETS_MODULE = "metaflow.plugins.kubernetes.kubernetes_jobsets"
_JOBS_MODULE = "metaflow.plugins.kubernetes.kubernetes_job"
_JOBSET_LABEL = "jobset.sigs.k8s.io/"
# How long a pod's failure takes at least to show in the JobSet's status (kubelet, Job and
# JobSet controllers each update in turn, a few seconds on a cluster); until then the other
# pods run on.
STATUS_DELAY_SECONDS = 2.0
# How long a started control pod may take at most, after another pod failed, to end by
# itself before the JobSet's failure stops it (see the module's docstring).
CONTROL_END_TIMEOUT_SECONDS = 300.0
_POD_SUFFIX = "0"  # the pod's completion index in its one-pod indexed Job
_ANNOTATION_OR_LABEL = re.compile(r"^metadata\.(annotations|labels)\['(?P<key>[^']*)'\]$")


def expand(text: str, variables: Callable[[str], Optional[str]]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of env values, command and args.

    ``$(NAME)`` becomes NAME's value when ``variables(NAME)`` knows it and stays as
    written otherwise; ``$$`` becomes ``$``; any other ``$`` is kept: the rules of
    Kubernetes' ``third_party/forked/golang/expansion``, written anew here.
    """
    out: List[str] = []
    cursor = 0
    while cursor < len(text):
        char = text[cursor]
        if char != "$" or cursor + 1 == len(text):
            out.append(char)
            cursor += 1
            continue
        following = text[cursor + 1]
        if following == "$":
            out.append("$")
            cursor += 2
        elif following == "(":
            closing = text.find(")", cursor + 2)
            if closing < 0:  # an incomplete reference is kept as written
                out.append("$(")
                cursor += 2
                continue
            name = text[cursor + 2:closing]
            value = variables(name)
            out.append(f"$({name})" if value is None else value)
            cursor = closing + 1
        else:
            out.append("$" + following)
            cursor += 2
    return "".join(out)


def _field(path: str, pod: Dict[str, Any]) -> str:
    match = _ANNOTATION_OR_LABEL.match(path)
    if match:
        return pod["metadata"][match.group(1)].get(match["key"], "")
    simple = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.uid": pod["metadata"]["uid"],
        "spec.serviceAccountName": pod["spec"]["serviceAccountName"],
        "spec.nodeName": pod["spec"]["nodeName"],
        "status.hostIP": pod["status"]["hostIP"],
        "status.podIP": pod["status"]["podIP"],
    }
    if path not in simple:
        raise ValueError(f"the rehearsal does not know the field reference {path!r}")
    return simple[path]


def container_environment(container: Dict[str, Any], pod: Dict[str, Any]) -> Dict[str, str]:
    """The container's environment from its ``env`` list, in order, as the kubelet builds it."""
    if container.get("envFrom"):
        raise ValueError("the rehearsal does not model envFrom (secrets)")
    env: Dict[str, str] = {}
    for variable in container.get("env") or []:
        if "valueFrom" in variable and variable["valueFrom"]:
            field_ref = variable["valueFrom"].get("fieldRef")
            if not field_ref:
                raise ValueError(f"the rehearsal only models fieldRef: {variable}")
            env[variable["name"]] = _field(field_ref["fieldPath"], pod)
        else:
            env[variable["name"]] = expand(variable.get("value") or "", env.get)
    return env


def _pod_object(jobset: Dict[str, Any], replicated_job: Dict[str, Any],
                job_index: int) -> Dict[str, Any]:
    """The pod the Job controller would create for a job of a replicated job."""
    jobset_name = jobset["metadata"]["name"]
    job_name = f"{jobset_name}-{replicated_job['name']}-{job_index}"
    template = replicated_job["template"]["spec"]["template"]
    controller_keys = {
        _JOBSET_LABEL + "jobset-name": jobset_name,
        _JOBSET_LABEL + "replicatedjob-name": replicated_job["name"],
        _JOBSET_LABEL + "replicatedjob-replicas": str(replicated_job["replicas"]),
        _JOBSET_LABEL + "job-index": str(job_index),
        _JOBSET_LABEL + "restart-attempt": "0",
        "batch.kubernetes.io/job-completion-index": _POD_SUFFIX,
        "batch.kubernetes.io/job-name": job_name,
    }
    metadata = template.get("metadata") or {}
    namespace = metadata.get("namespace") or replicated_job["template"]["metadata"]["namespace"]
    spec = template["spec"]
    hostname = f"{job_name}-{_POD_SUFFIX}"
    if spec.get("subdomain") and spec.get("setHostnameAsFQDN"):
        hostname = f"{hostname}.{spec['subdomain']}.{namespace}.svc.cluster.local"
    return pod_object(
        name=f"{job_name}-{_POD_SUFFIX}-{uuid.uuid4().hex[:5]}", hostname=hostname,
        namespace=namespace, labels={**(metadata.get("labels") or {}), **controller_keys},
        annotations={**(metadata.get("annotations") or {}), **controller_keys},
        service_account=spec.get("serviceAccountName"))


def _job_pod_object(job: Dict[str, Any]) -> Dict[str, Any]:
    """The pod the Job controller would create for a Job manifest with ``generateName``."""
    job_name = job["metadata"]["generateName"] + uuid.uuid4().hex[:5]
    job_uid = str(uuid.uuid4())
    template = job["spec"]["template"]
    metadata = template.get("metadata") or {}
    controller_labels = {
        "batch.kubernetes.io/controller-uid": job_uid,
        "batch.kubernetes.io/job-name": job_name,
        "controller-uid": job_uid,
        "job-name": job_name,
    }
    pod_name = f"{job_name}-{uuid.uuid4().hex[:5]}"
    return pod_object(
        name=pod_name, hostname=pod_name,
        namespace=metadata.get("namespace") or job["metadata"]["namespace"],
        labels={**(metadata.get("labels") or {}), **controller_labels},
        annotations=metadata.get("annotations") or {},
        service_account=template["spec"].get("serviceAccountName"))


def pod_object(name: str, hostname: str, namespace: str, labels: Dict[str, str],
               annotations: Dict[str, str], service_account: Optional[str]) -> Dict[str, Any]:
    """A pod as field references see it; ``status`` (its addresses) comes once it has a host."""
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                     "labels": labels, "annotations": annotations},
        "spec": {"hostname": hostname, "serviceAccountName": service_account or "default",
                 "nodeName": f"node-{name}"},
        "status": {},
    }


def container_pod(pod: Dict[str, Any], container: Dict[str, Any], start_delay: float = 0.0,
                  volumes: Optional[Dict[str, str]] = None) -> Any:
    """The PodSpec that runs ``container`` of ``pod`` (see ``pod_object``)."""
    from tests.rehearsal import cluster

    def environment(address: str) -> Dict[str, str]:
        pod["status"] = {"hostIP": address, "podIP": address}  # one pod per node here
        return container_environment(container, pod)

    # The command is expanded with the environment; fieldRefs to addresses appear in env
    # values only, so a provisional address leaves the command as it will be.
    provisional = environment("0.0.0.0")
    command = [expand(part, provisional.get)
               for part in (container.get("command") or []) + (container.get("args") or [])]
    return cluster.PodSpec(name=pod["metadata"]["name"], hostname=pod["spec"]["hostname"],
                           command=command, start_delay=start_delay,
                           env_for_address=environment, volumes=volumes or {})


def pod_specs(manifest: Dict[str, Any], control_start_delay: float = 0.0) -> Dict[str, List[Any]]:
    """``{replicated job name: the PodSpecs of its pods}`` for a JobSet manifest.

    ``control_start_delay`` holds back the pods of the ``control`` replicated job.
    """
    specs: Dict[str, List[Any]] = {}
    for replicated_job in manifest["spec"]["replicatedJobs"]:
        (container,) = replicated_job["template"]["spec"]["template"]["spec"]["containers"]
        delay = control_start_delay if replicated_job["name"] == "control" else 0.0
        specs[replicated_job["name"]] = [
            container_pod(_pod_object(manifest, replicated_job, job_index), container, delay)
            for job_index in range(int(replicated_job["replicas"]))
        ]
    return specs


class StandInJobSet:
    """What ``KubernetesJobSet.execute`` returns: ``RunningJobSet``'s interface over pods."""

    def __init__(self, name: str, pods: Dict[str, List[Any]]):
        self._name = name
        self._pods = pods  # {replicated job name: its pods, in job index order}
        self._failed: Optional[Any] = None
        self._failures_seen: Dict[str, float] = {}  # pod name: when its failure was first seen
        atexit.register(self.kill)

    def __repr__(self) -> str:
        return f"StandInJobSet({self._name!r})"

    def pods(self) -> Dict[str, List[Any]]:
        """``{replicated job name: its RunningPods}``."""
        return self._pods

    def _all(self) -> List[Any]:
        return [pod for pods in self._pods.values() for pod in pods]

    def _update(self) -> None:
        if self._failed is not None:
            return
        now = time.monotonic()
        failed = [pod for pod in self._all() if pod.poll() not in (None, 0)]
        if not failed:
            return
        for pod in failed:
            self._failures_seen.setdefault(pod.name, now)
        first = min(failed, key=lambda pod: self._failures_seen[pod.name])
        waited = now - self._failures_seen[first.name]
        control = self._pods["control"][0]
        # A started control pod names the failure and saves its logs before it ends.
        control_running = control.started and control.poll() is None
        if waited >= STATUS_DELAY_SECONDS and (
                not control_running or waited >= CONTROL_END_TIMEOUT_SECONDS):
            self._failed = first
            self.kill()  # the JobSet fails at the first failed Job: the rest are stopped

    @property
    def id(self) -> str:
        return "pod %s" % self._pods["control"][0].name

    @property
    def is_done(self) -> bool:
        self._update()
        return self._failed is not None or all(pod.poll() == 0 for pod in self._all())

    @property
    def has_succeeded(self) -> bool:
        return self.is_done and self._failed is None

    @property
    def has_failed(self) -> bool:
        return self.is_done and self._failed is not None

    @property
    def is_running(self) -> bool:
        return not self.is_done and any(pod.started for pod in self._all())

    @property
    def is_waiting(self) -> bool:
        return not self.is_done and not self.is_running

    @property
    def status(self) -> str:
        if self.is_done:
            return "Jobset is done"
        if self._pods["control"][0].started:
            return "Jobset is running"
        return "Jobset waiting for jobs to start"

    @property
    def reason(self) -> Tuple[Optional[int], Optional[str]]:
        if self.has_succeeded:
            return 0, None
        code = self._pods["control"][0].poll()
        if code is not None and code > 0:  # failed by itself, not stopped with the JobSet
            return code, "control-pod failed [Failed]"
        if self._failed is not None:
            return None, "Worker pods failed"
        return None, None

    def kill(self) -> None:
        for pod in self._all():
            pod.kill()


def start(manifest: Dict[str, Any], control_start_delay: float = 0.0) -> StandInJobSet:
    """Start the pods of a JobSet manifest, control first (see the module's docstring)."""
    from tests.rehearsal import cluster

    specs = pod_specs(manifest, control_start_delay)
    # One start_pods call, so that every pod resolves the others' names as DNS would; pods
    # start in the manifest's order of replicated jobs, which is what InOrder asks for
    # (starting at once is what no startup policy allows too).
    ordered = [spec for name in specs for spec in specs[name]]
    pods = iter(cluster.start_pods(ordered))
    return StandInJobSet(manifest["metadata"]["name"],
                         {name: [next(pods) for _ in group] for name, group in specs.items()})


class StandInJob:
    """What ``KubernetesJob.execute`` returns: ``RunningJob``'s interface over the Job's pod."""

    def __init__(self, pod: Any):
        self._pod = pod
        atexit.register(self.kill)

    def __repr__(self) -> str:
        return f"StandInJob({self._pod.name!r})"

    @property
    def id(self) -> str:
        return "pod %s" % self._pod.name

    @property
    def is_done(self) -> bool:
        return self._pod.poll() is not None

    @property
    def has_succeeded(self) -> bool:
        return self._pod.poll() == 0

    @property
    def has_failed(self) -> bool:
        return self._pod.poll() not in (None, 0)

    @property
    def is_running(self) -> bool:
        return self._pod.started and not self.is_done

    @property
    def is_waiting(self) -> bool:
        return not self.is_done and not self.is_running

    @property
    def status(self) -> str:
        if self.is_done:
            return "Job is done"
        if self._pod.started:
            return "Pod is running, Container is running"
        return "Pod is pending, Container is waiting - ContainerCreating"

    @property
    def reason(self) -> Tuple[Optional[int], Optional[str]]:
        """``(exit code, reason)`` of the terminated container, as ``RunningJob.reason``."""
        code = self._pod.poll()
        if code is None:
            return None, None
        if code == 0:
            return 0, None
        # The kubelet reports a container killed by a signal as exit code 128 + the signal.
        return (code if code > 0 else 128 - code), "Error"

    def kill(self) -> None:
        self._pod.kill()


def start_job(manifest: Dict[str, Any]) -> StandInJob:
    """Start the pod of a Job manifest (see the module's docstring)."""
    from tests.rehearsal import cluster

    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    (pod,) = cluster.start_pods([container_pod(_job_pod_object(manifest), container)])
    return StandInJob(pod)


def install() -> None:
    """Replace ``KubernetesJob.execute`` and ``KubernetesJobSet.execute`` once Metaflow loads
    them (in this process)."""
    from tests.rehearsal import cluster

    def patch_jobs(module: Any) -> None:
        def execute(job: Any) -> StandInJob:
            from kubernetes.client import ApiClient

            # The V1Job that create() built, as the client would send it to the API server.
            return start_job(ApiClient().sanitize_for_serialization(job._job))

        module.KubernetesJob.execute = execute

    def patch_jobsets(module: Any) -> None:
        def execute(jobset: Any) -> StandInJobSet:
            return start(jobset.dump(), float(cluster.description()["control_start_delay"]))

        module.KubernetesJobSet.execute = execute

    cluster.call_when_imported(_JOBS_MODULE, patch_jobs)
    cluster.call_when_imported(_JOBSETS_MODULE, patch_jobsets)
