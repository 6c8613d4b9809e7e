"""A stand-in for Argo Workflows: runs a compiled workflow's DAG with pods of the cluster.

``python flow.py argo-workflows create --only-json`` compiles the flow (and uploads
its code package to S3) for real; the test hands the printed WorkflowTemplate to
``run_workflow``, which runs this module on the laptop test host (``python -m
tests.rehearsal.argo``), as a workflow controller of the cluster would:

- from the entrypoint template down: ``dag`` templates run their tasks in the order
  their ``depends`` (``a.Succeeded && b.Succeeded``) allow, a task with ``withParam``
  once per item of its JSON list, one after the other; a failed task fails its DAG
  (``failFast``) and the workflow;
- ``container`` templates run as a pod named ``<workflow>-<template>-<random>``
  (its hostname, as Argo's pods have no subdomain), with the template's emptyDir
  volumes, output parameters read from files (``valueFrom.path``) in them; env, field
  references and ``$(VAR)`` as ``kubernetes_standin`` builds them;
- ``resource`` templates that create a JobSet run it with ``kubernetes_standin``,
  succeed or fail with it, and take output parameters from the manifest (``jsonPath``
  of ``{.metadata.labels.<key>}``);
- ``{{...}}`` in templates is substituted before a template runs: ``workflow.name``,
  ``workflow.namespace``, ``workflow.creationTimestamp``, ``workflow.parameters.<p>``,
  ``inputs.parameters.<p>``, ``tasks.<t>.outputs.parameters.<p>``, ``item``, and
  the ``{{=...}}`` expressions Metaflow writes (``asInt``, ``toBase64``,
  ``sprig.int``, ``sprig.sub``, ``inputs.parameters['p']``). Anything else fails the
  run, so a template this stand-in does not understand never passes silently.

Not modelled: exit handlers and hooks (``onExit``, ``hooks``), retries, parallel
execution of independent tasks, artifacts, Argo Events.
"""

import base64
import json
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_LABEL_PATH = re.compile(r"^\{\.metadata\.labels\.([^}]+)\}$")
_DEPENDENCY = re.compile(r"^([A-Za-z0-9_-]+)\.Succeeded$")
_POLL_SECONDS = 0.2


class WorkflowFailed(Exception):
    """A template of the workflow failed; the message says which and why."""


class _Parameters:
    """``x.parameters.name`` and ``x.parameters['name']`` in ``{{=...}}`` expressions."""

    def __init__(self, values: Dict[str, str]):
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __getattr__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


def _expression(text: str, scope: Dict[str, str]) -> str:
    """Evaluate an expr-lang expression of the few kinds Metaflow writes."""
    def parameters(prefix: str) -> SimpleNamespace:
        return SimpleNamespace(parameters=_Parameters(
            {key[len(prefix):]: value for key, value in scope.items() if key.startswith(prefix)}))

    names = {
        "inputs": parameters("inputs.parameters."),
        "workflow": parameters("workflow.parameters."),
        "sprig": SimpleNamespace(int=lambda value: int(str(value)), sub=lambda a, b: a - b),
        "asInt": lambda value: int(str(value)),
        "toBase64": lambda value: base64.b64encode(str(value).encode()).decode(),
    }
    return str(eval(text, {"__builtins__": {}}, names))  # noqa: S307 - Metaflow's own template text


def substitute(value: Any, scope: Dict[str, str]) -> Any:
    """``value`` (a string, or lists and dicts of them) with every ``{{...}}`` replaced."""
    if isinstance(value, dict):
        return {key: substitute(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, scope) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: "re.Match[str]") -> str:
        name = match[1].strip()
        if name.startswith("="):
            return _expression(name[1:], scope)
        if name not in scope:
            raise WorkflowFailed(f"the stand-in knows no value for {{{{{name}}}}}")
        return scope[name]

    return _PLACEHOLDER.sub(replace, value)


class WorkflowRun:
    """One run of a WorkflowTemplate; ``run()`` returns the pods it started, in order."""

    def __init__(self, template: Dict[str, Any], parameters: Dict[str, str]):
        self.templates = {item["name"]: item for item in template["spec"]["templates"]}
        self.entrypoint = template["spec"]["entrypoint"]
        self.name = f"{template['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        self.namespace = template["metadata"]["namespace"]
        defaults = {item["name"]: item.get("value", "")
                    for item in template["spec"].get("arguments", {}).get("parameters", [])}
        unknown = set(parameters) - set(defaults)
        if unknown:
            raise WorkflowFailed(f"the workflow has no parameters {sorted(unknown)}")
        self.globals = {
            "workflow.name": self.name,
            "workflow.namespace": self.namespace,
            "workflow.creationTimestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **{f"workflow.parameters.{key}": value for key, value in {**defaults, **parameters}.items()},
        }
        self.pods: List[Dict[str, Any]] = []  # {"template", "name", "exit_code"}

    def run(self) -> None:
        """Run the entrypoint; WorkflowFailed names the template that failed."""
        self._run_template(self.entrypoint, {})

    def _run_template(self, name: str, inputs: Dict[str, str]) -> Dict[str, str]:
        template = self.templates[name]
        declared = [item["name"] for item in template.get("inputs", {}).get("parameters", [])]
        missing = set(declared) - set(inputs)
        if missing:
            raise WorkflowFailed(f"template {name} lacks inputs {sorted(missing)}")
        scope = {**self.globals, **{f"inputs.parameters.{key}": inputs[key] for key in declared}}
        if "dag" in template:
            return self._run_dag(template, scope)
        if "container" in template:
            return self._run_container(template, scope)
        if "resource" in template:
            return self._run_resource(template, scope)
        raise WorkflowFailed(f"template {name}: the stand-in runs dag, container and resource only")

    def _run_dag(self, template: Dict[str, Any], scope: Dict[str, str]) -> Dict[str, str]:
        pending = list(template["dag"]["tasks"])
        succeeded: Dict[str, Dict[str, str]] = {}
        while pending:
            ready = next((task for task in pending if self._dependencies(task) <= set(succeeded)), None)
            if ready is None:
                raise WorkflowFailed(f"tasks that can never run: {[t['name'] for t in pending]}")
            pending.remove(ready)
            task_scope = {**scope, **{f"tasks.{task}.outputs.parameters.{key}": value
                                      for task, outputs in succeeded.items()
                                      for key, value in outputs.items()}}
            items = [None]
            if "withParam" in ready:
                items = json.loads(substitute(ready["withParam"], task_scope))
            for item in items:
                item_scope = task_scope if item is None else {**task_scope, "item": str(item)}
                arguments = {argument["name"]: substitute(argument.get("value", ""), item_scope)
                             for argument in ready.get("arguments", {}).get("parameters", [])}
                succeeded[ready["name"]] = self._run_template(ready["template"], arguments)
        # Output parameters of a DAG name its tasks' outputs.
        final_scope = {**scope, **{f"tasks.{task}.outputs.parameters.{key}": value
                                   for task, outputs in succeeded.items()
                                   for key, value in outputs.items()}}
        return {item["name"]: substitute(item["valueFrom"]["parameter"], final_scope)
                for item in template.get("outputs", {}).get("parameters", [])}

    @staticmethod
    def _dependencies(task: Dict[str, Any]) -> set:
        depends = (task.get("depends") or "").strip()
        if not depends:
            return set()
        found = set()
        for clause in depends.split("&&"):
            match = _DEPENDENCY.match(clause.strip())
            if not match:
                raise WorkflowFailed(f"the stand-in cannot evaluate depends {depends!r}")
            found.add(match[1])
        return found

    def _run_container(self, template: Dict[str, Any], scope: Dict[str, str]) -> Dict[str, str]:
        from tests.rehearsal import cluster, kubernetes_standin

        container = substitute(template["container"], scope)
        metadata = substitute(template.get("metadata") or {}, scope)
        empty_dirs = {volume["name"] for volume in template.get("volumes") or []
                      if "emptyDir" in volume}
        volumes = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts") or []
                   if mount["name"] in empty_dirs}
        pod_name = f"{self.name}-{template['name']}-{uuid.uuid4().hex[:5]}"
        pod = kubernetes_standin.pod_object(
            name=pod_name, hostname=pod_name, namespace=self.namespace,
            labels=metadata.get("labels") or {}, annotations=metadata.get("annotations") or {},
            service_account=template.get("serviceAccountName"))
        (running,) = cluster.start_pods([kubernetes_standin.container_pod(pod, container,
                                                                          volumes=volumes)])
        code = running.wait()
        self.pods.append({"template": template["name"], "name": pod_name, "exit_code": code})
        if code != 0:
            raise WorkflowFailed(f"template {template['name']}: pod {pod_name} exited with {code}")
        outputs = {}
        for parameter in template.get("outputs", {}).get("parameters", []):
            path = Path(parameter["valueFrom"]["path"])
            volume = volumes.get(str(path.parent))
            source = None if volume is None else running.volume(volume) / path.name
            if source is None or not source.exists():
                raise WorkflowFailed(f"template {template['name']}: no output file {path}")
            outputs[parameter["name"]] = source.read_text().strip()
        return outputs

    def _run_resource(self, template: Dict[str, Any], scope: Dict[str, str]) -> Dict[str, str]:
        import yaml

        from tests.rehearsal import cluster, kubernetes_standin

        resource = template["resource"]
        manifest = yaml.safe_load(substitute(resource["manifest"], scope))
        if resource.get("action") != "create" or manifest.get("kind") != "JobSet":
            raise WorkflowFailed(f"template {template['name']}: the stand-in creates JobSets only")
        jobset = kubernetes_standin.start(manifest, float(cluster.description()["control_start_delay"]))
        while not jobset.is_done:
            time.sleep(_POLL_SECONDS)
        for pods in jobset.pods().values():
            for pod in pods:
                self.pods.append({"template": template["name"], "name": pod.name,
                                  "exit_code": pod.poll()})
        if not jobset.has_succeeded:
            raise WorkflowFailed(f"template {template['name']}: JobSet failed: {jobset.reason}")
        outputs = {}
        for parameter in template.get("outputs", {}).get("parameters", []):
            match = _LABEL_PATH.match(parameter["valueFrom"].get("jsonPath", ""))
            if not match:
                raise WorkflowFailed(f"the stand-in cannot read output {parameter}")
            outputs[parameter["name"]] = str(manifest["metadata"]["labels"][match[1]])
        return outputs


def compiled_template(output: str) -> Dict[str, Any]:
    """The WorkflowTemplate in the output of ``argo-workflows create --only-json``."""
    start = output.index("\n{") + 1
    template, _ = json.JSONDecoder().raw_decode(output[start:])
    return template


def run_workflow(cluster: Any, template: Dict[str, Any], parameters: Dict[str, str],
                 timeout: float = 300) -> Dict[str, Any]:
    """Run ``template`` on ``cluster``'s laptop; ``{"name", "error", "pods"}`` of the run.

    ``pods`` lists every pod in the order it ended: ``{"template", "name", "exit_code"}``;
    ``error`` is None when the workflow succeeded.
    """
    workdir = Path(cluster.root) / f"argo-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    (workdir / "workflow.json").write_text(json.dumps(template))
    done = cluster.run_on_laptop(
        [sys.executable, "-m", "tests.rehearsal.argo", str(workdir / "workflow.json"),
         str(workdir / "result.json"), *(f"{key}={value}" for key, value in parameters.items())],
        timeout=timeout)
    result_file = workdir / "result.json"
    if not result_file.exists():
        raise AssertionError(f"the Argo stand-in crashed:\n{done.stdout}{done.stderr[-6000:]}")
    return json.loads(result_file.read_text())


def main(argv: List[str]) -> int:
    """``python -m tests.rehearsal.argo WORKFLOW_JSON RESULT_JSON [NAME=VALUE ...]``."""
    template = json.loads(Path(argv[0]).read_text())
    parameters = dict(item.split("=", 1) for item in argv[2:])
    run = WorkflowRun(template, parameters)
    error: Optional[str] = None
    try:
        run.run()
    except WorkflowFailed as failed:
        error = str(failed)
    Path(argv[1]).write_text(json.dumps({"name": run.name, "error": error, "pods": run.pods}))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
