"""The rehearsal's cluster: test hosts, an S3 server, the flow's "laptop", and pods.

Usage (a test)::

    with Cluster(tmp_path, pod_python_env()) as cluster:   # standins=("kubernetes",)
        run = cluster.run_flow("remote_flow.py", "--max-workers", "4")
        assert run.returncode == 0, run.output
        cluster.pod_logs()            # {pod name: what the pod printed}
        remote_task_lines(run, "join")   # {job as Metaflow names it: the step's task lines}

``Cluster`` makes the test hosts (network namespaces on a bridge, see
``tests.harness.netns_hosts``): host 0 is the laptop, where ``python flow.py run`` runs;
host 1 serves S3 (moto's server mode, bucket ``BUCKET``); the others are free for pods.
It writes a cluster description (JSON) and names it in ``CLUSTER_VAR`` on the flow
process, whose ``PYTHONPATH`` holds ``site/`` and the repository root (for
``tests.rehearsal`` and ``tests.harness``): its ``sitecustomize`` installs the
stand-ins the description lists (``install()`` of ``tests.rehearsal.<name>_standin``) in
every Python process of the flow run. Pods never get either variable.

Usage (a stand-in, inside Metaflow's processes)::

    from tests.rehearsal import cluster
    pods = cluster.start_pods([cluster.PodSpec(name=..., hostname=..., command=[...], env={...})])
    pods[0].poll(); pods[0].wait(5); pods[0].kill(); pods[0].address; pods[0].log_path
    cluster.state_dir()              # a directory for the stand-in's own records
    cluster.description()["control_start_delay"]   # what the test asked for this run

Each pod runs ``command`` with exactly ``env`` (the container's environment) on
top of the image's environment (PATH with the pod Python environment first, HOME,
``METAFLOW_SKIP_INSTALL_DEPENDENCIES`` as an image with Metaflow's dependencies
sets it, the marker variable) and the S3 credentials a cluster's IAM role would
give, in a test host of its own, in its own PID, UTS and mount namespaces (a
container: when its first process ends, everything in it dies; its /tmp and /mnt
are its own) with its hostname set, in an empty working directory, output to
``log_path``. Each
pod's ``/etc/hosts`` maps every pod of the same ``start_pods`` call to its address
from the moment that pod starts, as a cluster's DNS would (a pod started late is
unknown until then).

Every process of a flow run and of its pods carries the test's marker variable
(``tests.harness.processes.MARKER_VAR``): ``Cluster.kill_all`` kills whatever is left.
"""

import contextlib
import fcntl
import importlib.abc
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from tests.harness.cards import read_cards
from tests.harness.flow_runs import FLOWS, FlowRun, run_to_end
from tests.harness.netns_hosts import TestHosts
from tests.harness.processes import MARKER_VAR, is_alive, kill_processes, processes_with_marker

from . import metadata_service

CLUSTER_VAR = "METAFLOW_TORCHRUN_REHEARSAL_CLUSTER"
BUCKET = "rehearsal"
S3_PORT = 5000
METADATA_PORT = 8080
# What Kubernetes would name the namespace the pods run in.
KUBERNETES_NAMESPACE = "rehearsal"
# Dummy credentials: moto accepts any; a cluster's IAM role would give real ones.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "rehearsal",
    "AWS_SECRET_ACCESS_KEY": "rehearsal",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# PATH of a stock container image, after the pod Python environment's bin.
_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOSTS_HEADER = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
_REPO = Path(__file__).resolve().parents[2]
_SITE = Path(__file__).resolve().parent / "site"
_LAPTOP, _S3_HOST, _FIRST_POD_HOST = 0, 1, 2
_POLL_SECONDS = 0.05
# A remote task's line as the flow's output shows it: "[pod NAME] text" (Kubernetes),
# "[JOB ID] text" (AWS Batch).
_REMOTE_TASK_LINE = re.compile(r"^\[(?P<job>[^\]]+)\] (?P<text>.*)$")


# ---- inside Metaflow's processes: the description and the pod runner ----


def description() -> Dict[str, Any]:
    """The cluster description of this flow run (from ``CLUSTER_VAR``)."""
    return json.loads(Path(os.environ[CLUSTER_VAR]).read_text())


def state_dir() -> Path:
    """The cluster's directory for records of stand-ins and pods."""
    return Path(description()["state_dir"])


@dataclass
class PodSpec:
    """A pod to start: ``env`` is the container's whole environment as the job gives it.

    ``env_for_address``, when given, builds that environment instead, from the
    address the pod gets (for what a cluster fills in from the pod's IP).
    ``start_delay`` holds the pod back for that many seconds (a slow image pull).
    ``volumes`` maps mount paths in the pod, under ``/mnt``, to names of empty
    directories (``RunningPod.volume``), as emptyDir volumes.
    """

    name: str
    hostname: str
    command: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    start_delay: float = 0.0
    env_for_address: Optional[Callable[[str], Dict[str, str]]] = None
    volumes: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mount_path in self.volumes:
            if Path(mount_path).parent != Path("/mnt"):
                raise ValueError(f"the rehearsal mounts volumes in /mnt only, not {mount_path}")


@dataclass
class _PodHost:
    namespace: str
    address: str


class RunningPod:
    """A pod started by ``start_pods``; pending until its start delay has passed."""

    def __init__(self, spec: PodSpec, host: _PodHost, group: List["RunningPod"],
                 settings: Dict[str, Any]):
        self.spec = spec
        self.name = spec.name
        self.address = host.address
        self.namespace = host.namespace
        self._pod_dir = Path(settings["state_dir"]) / "pods" / spec.name
        self.log_path = self._pod_dir.with_suffix(".log")
        self._dirs = {name: self._pod_dir / name for name in ("work", "home")}
        self._dirs.update({f"volume {name}": self.volume(name) for name in spec.volumes.values()})
        self._hosts_file = Path("/etc/netns") / host.namespace / "hosts"
        self._group = group
        self._settings = settings
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._killed = False
        self._timer: Optional[threading.Timer] = None

    @property
    def started(self) -> bool:
        return self._process is not None

    def volume(self, name: str) -> Path:
        """The directory behind the pod's volume ``name``."""
        return self._pod_dir / "volumes" / name

    def _environment(self) -> Dict[str, str]:
        image_env = {
            "PATH": f"{self._settings['pod_python_bin']}:{_IMAGE_PATH}",
            "HOME": str(self._dirs["home"]),
            **self._settings["image_env"],
        }
        container_env = (self.spec.env if self.spec.env_for_address is None
                         else self.spec.env_for_address(self.address))
        return {**image_env, **self._settings["role_env"], **container_env,
                MARKER_VAR: self._settings["marker"]}

    def _launch(self) -> None:
        with self._lock:
            if self._killed or self._process is not None:
                return
            for directory in self._dirs.values():
                directory.mkdir(parents=True, exist_ok=True)
            entry = f"{self.address} {self.spec.hostname} {self.spec.hostname.split('.')[0]}\n"
            for pod in self._group:  # the name resolves from now on, as DNS would answer
                with open(pod._hosts_file, "a") as hosts:
                    hosts.write(entry)
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    [self._settings["ip"], "netns", "exec", self.namespace,
                     # --kill-child: when the pod is killed, so is everything in its PID namespace
                     "unshare", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
                     "sh", "-c", self._container_script(), "sh", *self.spec.command],
                    cwd=self._dirs["work"], env=self._environment(),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            _claim_host(self.namespace, self._settings, self._process.pid)
            self.log_path.with_suffix(".json").write_text(json.dumps({
                "started": time.time(), "hostname": self.spec.hostname,
                "address": self.address, "namespace": self.namespace}))

    def _container_script(self) -> str:
        """Shell lines that make the pod's namespaces look like a container, then run it.

        The hostname; empty ``/mnt`` and ``/tmp`` of its own (``/tmp/mf-input-paths`` and
        the per-rank logs are the pod's); its volumes. What the pod needs from the
        machine and may lie below the machine's /tmp (its own directory, and the pod
        Python environment, which lives under the test venv wherever the checkout is)
        is staged in /mnt and put back at its path over the new /tmp. gVisor refuses
        ``mount --move``, hence the staging.
        """
        kept = [str(self._pod_dir), str(Path(self._settings["pod_python_bin"]).parent)]
        stages = [f"/mnt/.keep{index}" for index in range(len(kept))]
        lines = ["set -e", f"hostname {shlex.quote(self.spec.hostname)}", "mount -t tmpfs tmpfs /mnt"]
        for path, stage in zip(kept, stages):
            lines += [f"mkdir {stage}", f"mount --bind {shlex.quote(path)} {stage}"]
        for mount_path, name in self.spec.volumes.items():
            lines += [f"mkdir -p {shlex.quote(mount_path)}",
                      f"mount --bind {shlex.quote(str(self.volume(name)))} {shlex.quote(mount_path)}"]
        lines.append("mount -t tmpfs tmpfs /tmp")
        for path, stage in zip(kept, stages):
            lines += [f"mkdir -p {shlex.quote(path)}", f"mount --bind {stage} {shlex.quote(path)}",
                      f"umount {stage}", f"rmdir {stage}"]
        lines += [f"cd {shlex.quote(str(self._dirs['work']))}", 'exec "$@"']
        return "\n".join(lines)

    def _start(self) -> None:
        if self.spec.start_delay > 0:
            self._timer = threading.Timer(self.spec.start_delay, self._launch)
            self._timer.daemon = True
            self._timer.start()
        else:
            self._launch()

    def poll(self) -> Optional[int]:
        """The pod's exit code (negative: killed by that signal), None while pending or running."""
        with self._lock:
            if self._process is None:
                return -signal.SIGKILL if self._killed else None
            return self._process.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        """The exit code, once the pod has ended; subprocess.TimeoutExpired after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.spec.command, timeout)
            time.sleep(_POLL_SECONDS)
        return code

    def kill(self) -> None:
        """Kill the pod, or cancel it while pending; waits for the pod's end."""
        with self._lock:
            self._killed = True
            if self._timer is not None:
                self._timer.cancel()
            process = self._process
            if process is None:
                _release_host(self.namespace, self._settings)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _host_free(record_path: Path) -> bool:
    """A host is free when no live owner holds it (a pod's process, or the starter of a pending pod)."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return True
    return not any(is_alive(pid) for pid in record.get("pids", []))


def _claim_host(namespace: str, settings: Dict[str, Any], pod_pid: Optional[int]) -> None:
    record = Path(settings["state_dir"]) / "hosts" / f"{namespace}.json"
    # Once the pod runs, only its process holds the host: a finished pod frees it.
    pids = [pod_pid] if pod_pid is not None else [os.getpid()]
    record.write_text(json.dumps({"pids": pids}))


def _release_host(namespace: str, settings: Dict[str, Any]) -> None:
    (Path(settings["state_dir"]) / "hosts" / f"{namespace}.json").write_text(json.dumps({"pids": []}))


def start_pods(specs: Sequence[PodSpec]) -> List[RunningPod]:
    """Start ``specs`` as pods, each on a free test host (RuntimeError if too few are free)."""
    settings = description()
    hosts_dir = Path(settings["state_dir"]) / "hosts"
    with open(hosts_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        free = [_PodHost(**host) for host in settings["pod_hosts"]
                if _host_free(hosts_dir / f"{host['namespace']}.json")]
        if len(free) < len(specs):
            raise RuntimeError(f"{len(specs)} pods asked for, {len(free)} test hosts free")
        group: List[RunningPod] = []
        for spec, host in zip(specs, free):
            pod = RunningPod(spec, host, group, settings)
            pod._hosts_file.write_text(_HOSTS_HEADER)
            _claim_host(host.namespace, settings, None)
            group.append(pod)
    for pod in group:
        pod._start()
    return group


def call_when_imported(module_name: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` right after ``module_name`` is first imported (now, if it is)."""
    if module_name in sys.modules:
        callback(sys.modules[module_name])
        return

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name != module_name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            load = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                load(module)
                callback(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())


# ---- in the test process: hosts, S3, the laptop ----


def _kubeconfig() -> str:
    """A kubeconfig that the Kubernetes client loads; nothing ever connects to its server."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "rehearsal",
        "clusters": [{"name": "rehearsal", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "rehearsal", "user": {"token": "rehearsal"}}],
        "contexts": [{"name": "rehearsal", "context": {
            "cluster": "rehearsal", "user": "rehearsal", "namespace": KUBERNETES_NAMESPACE}}],
    })


_WAIT_FOR_PING = """
import sys, time, urllib.request
deadline = time.monotonic() + 20
while True:
    try:
        urllib.request.urlopen(sys.argv[1] + "/ping", timeout=1).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
"""


class Cluster:
    """Test hosts with S3 and room for ``pod_hosts`` pods; a context manager.

    ``pod_env`` is the pods' Python environment (``pod_env.pod_python_env()``);
    ``standins`` names the stand-in modules installed in the flow's processes.
    """

    def __init__(self, root: Path, pod_env: Path, pod_hosts: int = 4,
                 standins: Sequence[str] = ("kubernetes",)):
        self.root = root
        self.marker = f"rehearsal-{uuid.uuid4().hex[:12]}"
        self._s3_marker = f"{self.marker}-s3"
        self.hosts = TestHosts(_FIRST_POD_HOST + pod_hosts)
        self.state = root / "cluster"
        self.s3_endpoint = f"http://{self.hosts.addresses[_S3_HOST]}:{S3_PORT}"
        self._standins = list(standins)
        self.pod_env = pod_env
        self._runs = 0
        self._s3_log = None
        self.env: Dict[str, str] = {}

    def __enter__(self) -> "Cluster":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _create(self) -> None:
        self.hosts.__enter__()
        for directory in ("hosts", "pods"):
            (self.state / directory).mkdir(parents=True)
        for directory in ("home", "local", "tmp"):
            (self.root / directory).mkdir()
        (self.root / "kubeconfig").write_text(_kubeconfig())
        self.env = {
            "PATH": os.environ.get("PATH", _IMAGE_PATH),
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "LANG": "C.UTF-8",
            # site/ for sitecustomize; the repository root for what it imports (tests.rehearsal)
            "PYTHONPATH": os.pathsep.join([str(_SITE), str(_REPO)]),
            CLUSTER_VAR: str(self._write_description(0.0)),
            MARKER_VAR: self.marker,
            "METAFLOW_HOME": str(self.root / "home"),
            "METAFLOW_USER": "tester",  # tests run as root, which Metaflow refuses as a user
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
            "METAFLOW_DATATOOLS_S3ROOT": f"s3://{BUCKET}/data",
            "METAFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(self.root / "local"),
            "METAFLOW_KUBERNETES_NAMESPACE": KUBERNETES_NAMESPACE,
            "METAFLOW_KUBERNETES_CONTAINER_IMAGE": "rehearsal/python-torch:2.13.0",
            "KUBECONFIG": str(self.root / "kubeconfig"),
            **AWS_ENV,
        }
        self._s3_log = open(self.state / "s3.log", "wb")
        # A marker of its own: killing a flow run's leftovers leaves S3 up for the next run.
        subprocess.Popen(
            [*self.hosts.command_prefix(_S3_HOST), sys.executable, "-m", "moto.server",
             "-H", "0.0.0.0", "-p", str(S3_PORT)],
            env={**self.env, MARKER_VAR: self._s3_marker}, stdin=subprocess.DEVNULL,
            stdout=self._s3_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        made = self.run_on_laptop([sys.executable, "-c", _MAKE_BUCKET, BUCKET], timeout=60)
        if made.returncode != 0:
            raise RuntimeError(f"no S3 bucket: {made.stdout}{made.stderr}\n"
                               + (self.state / "s3.log").read_text()[-2000:])

    def _write_description(self, control_start_delay: float) -> Path:
        self._runs += 1
        path = self.state / f"description-{self._runs}.json"
        path.write_text(json.dumps({
            "marker": self.marker,
            "state_dir": str(self.state),
            "ip": shutil.which("ip"),
            "pod_hosts": [{"namespace": name, "address": address} for name, address in
                          zip(self.hosts.names[_FIRST_POD_HOST:],
                              self.hosts.addresses[_FIRST_POD_HOST:])],
            "pod_python_bin": str(self.pod_env / "bin"),
            # The image has the dependencies Metaflow would otherwise pip-install in the pod.
            "image_env": {"METAFLOW_SKIP_INSTALL_DEPENDENCIES": "1"},
            "role_env": AWS_ENV,
            "standins": self._standins,
            "control_start_delay": control_start_delay,
        }, indent=1))
        return path

    def laptop_command(self, argv: Sequence[str]) -> List[str]:
        return [*self.hosts.command_prefix(_LAPTOP), *argv]

    def run_on_laptop(self, argv: Sequence[str], timeout: float = 60,
                      env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on the laptop with the flow's environment (reaches S3)."""
        return subprocess.run(self.laptop_command(argv), env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def run_flow(self, flow: str, *args: str, command: Sequence[str] = ("run",),
                 control_start_delay: float = 0.0, env: Optional[Dict[str, str]] = None,
                 timeout: float = 240) -> FlowRun:
        """``python <tests/flows/flow> <command> args`` on the laptop, to its end."""
        run_env = {**self.env, **(env or {}),
                   CLUSTER_VAR: str(self._write_description(control_start_delay))}
        process = subprocess.Popen(
            self.laptop_command([sys.executable, str(FLOWS / flow), *command, *args]),
            cwd=self.root, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return run_to_end(process, timeout, f"{flow} {' '.join(command)}", self.kill_all)

    @contextlib.contextmanager
    def metadata_service(self) -> Iterator[str]:
        """A metadata service on the S3 test host, for the whole block; yields its URL.

        Run a flow with ``METAFLOW_DEFAULT_METADATA=service`` and
        ``METAFLOW_SERVICE_URL`` set to it: every pod registers its task there,
        so the laptop's client sees the tasks while they run.
        """
        address = self.hosts.addresses[_S3_HOST]
        url = f"http://{address}:{METADATA_PORT}"
        service = subprocess.Popen(
            [*self.hosts.command_prefix(_S3_HOST), sys.executable, metadata_service.__file__,
             "0.0.0.0", str(METADATA_PORT)],
            env={**self.env, MARKER_VAR: self._s3_marker}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            ready = self.run_on_laptop([sys.executable, "-c", _WAIT_FOR_PING, url], timeout=30)
            assert ready.returncode == 0, f"the metadata service never answered: {ready.stderr}"
            yield url
        finally:
            service.kill()
            service.wait()

    def read_cards(self, target: str, env: Dict[str, str], want: Sequence[str] = (),
                   timeout: float = 0) -> Dict[str, str]:
        """``{pathspec: Markdown}`` of the cards of ``target`` (a task, or
        ``Flow/latest/step``), read on the laptop with Metaflow's client (``env`` over
        the cluster's: the run's metadata), once one holds every text of ``want`` (or at
        ``timeout``); see ``tests.harness.cards``."""
        return read_cards(lambda argv, limit: self.run_on_laptop(argv, limit, env),
                          [target], want, timeout)

    def pod_logs(self) -> Dict[str, str]:
        """``{pod name: its output}`` of every pod started so far."""
        return {path.stem: path.read_text(errors="replace")
                for path in sorted((self.state / "pods").glob("*.log"))}

    def pod_started(self, name: str) -> float:
        """When pod ``name`` started (``time.time()``); KeyError if it never did."""
        record = self.state / "pods" / f"{name}.json"
        if not record.exists():
            raise KeyError(name)
        return json.loads(record.read_text())["started"]

    def pod_ended(self, name: str) -> float:
        """When pod ``name`` last wrote to its log (``time.time()``): its end, once it ended."""
        return (self.state / "pods" / f"{name}.log").stat().st_mtime

    def live_processes(self) -> List[int]:
        """Processes of the flow runs and their pods that are still alive."""
        return processes_with_marker(self.marker)

    def kill_all(self) -> None:
        """Kill every process of the flow runs and their pods (not the S3 server)."""
        kill_processes(self.live_processes())

    def assert_nothing_left(self, grace: float = 10.0) -> None:
        """Fail if a process of the flow runs or their pods outlives ``grace`` seconds; kill it."""
        deadline = time.monotonic() + grace
        while self.live_processes() and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        left = self.live_processes()
        self.kill_all()
        assert not left, f"processes left behind: {left}"

    def close(self) -> None:
        """Kill every process of the cluster (S3 server included), then remove the hosts."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = self.live_processes() + processes_with_marker(self._s3_marker)
            if not left:
                break
            kill_processes(left)
            time.sleep(_POLL_SECONDS)
        if self._s3_log is not None:
            self._s3_log.close()
        self.hosts.__exit__(None, None, None)


def remote_task_lines(run: FlowRun, step: str) -> Dict[str, List[str]]:
    """``{job: its lines}`` of ``step``'s remote tasks in ``run``'s output, ``job`` as
    Metaflow names it in front of each line (``pod <name>`` on Kubernetes, the job id on
    AWS Batch): Metaflow's own lines about the job and what the task printed."""
    lines: Dict[str, List[str]] = {}
    for line in run.task_lines(step):
        match = _REMOTE_TASK_LINE.match(line)
        if match:
            lines.setdefault(match["job"], []).append(match["text"])
    return lines


_MAKE_BUCKET = """
import os, sys, time
import boto3
client = boto3.client("s3", endpoint_url=os.environ["METAFLOW_S3_ENDPOINT_URL"])
deadline = time.monotonic() + 30
while True:
    try:
        client.create_bucket(Bucket=sys.argv[1])
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
"""
