"""A small Metaflow metadata service for the rehearsal: the HTTP API of metaflow-service, in memory.

Metaflow's ``service`` metadata provider (``METAFLOW_DEFAULT_METADATA=service``,
``METAFLOW_SERVICE_URL``) talks to this server exactly as it talks to Netflix's
metaflow-service: flows, runs, steps, tasks, artifacts, metadata, heartbeats and
the filtered-tasks query, advertised as service version 2.5.0. It keeps what it
is told in memory and answers Metaflow's client API from that, so every node of a
multi-node job sees the tasks of the others, which is what Metaflow's AWS Batch
path needs (its node 0 waits for the secondary nodes through the client API).

Ids come as metaflow-service hands them out: run numbers and task ids each from
one database sequence shared by every flow, so on a service in use they are long
numbers. The sequences start where a service that has run a few thousand flows
would be (``FIRST_RUN_NUMBER``, ``FIRST_TASK_ID``). Tasks that bring their own id
(``<control id>-node-1`` on Batch) keep it.

Run it with ``python metadata_service.py HOST PORT`` (stdlib only); it serves
until killed. Not covered, as no rehearsal needs them: tag mutation,
authentication, the UI's endpoints, persistence.
"""

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

SERVICE_VERSION = "2.5.0"
FIRST_RUN_NUMBER = 20431
FIRST_TASK_ID = 7204519
HEARTBEAT_SECONDS = 10

Key = Tuple[str, ...]


def _now_ms() -> int:
    return int(time.time() * 1000)


class MetadataStore:
    """Flows, runs, steps and tasks by path, with their artifacts and metadata; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: Dict[Key, Dict[str, Any]] = {}  # (flow[, run[, step[, task]]]) -> record
        self.artifacts: Dict[Key, List[Dict[str, Any]]] = {}
        self.metadata: Dict[Key, List[Dict[str, Any]]] = {}
        self.next_run_number = FIRST_RUN_NUMBER
        self.next_task_id = FIRST_TASK_ID

    def children(self, parent: Key) -> List[Dict[str, Any]]:
        return [record for key, record in self.objects.items()
                if len(key) == len(parent) + 1 and key[:len(parent)] == parent]

    def create(self, key_prefix: Key, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        """Create the flow, run, step or task under ``key_prefix`` from a POSTed body.

        A run or task without an id gets the next one of its sequence. Answers 404
        when the parent is missing and 409 when the object exists, as the service does.
        """
        level = len(key_prefix)  # 0 flow, 1 run, 2 step, 3 task
        if level and key_prefix not in self.objects:
            return 404, {"message": "parent %s not found" % "/".join(key_prefix)}
        record = dict(body)
        record.setdefault("ts_epoch", _now_ms())
        record.setdefault("tags", [])
        record.setdefault("system_tags", [])
        if level == 0:
            own_id = record["flow_id"]
        elif level == 1:
            if record.get("run_number") is None:
                record["run_number"] = str(self.next_run_number)
                self.next_run_number += 1
            own_id = record["run_number"] = str(record["run_number"])
        elif level == 2:
            own_id = record["step_name"]
        else:
            if record.get("task_id") is None:
                record["task_id"] = str(self.next_task_id)
                self.next_task_id += 1
            own_id = record["task_id"] = str(record["task_id"])
        key = key_prefix + (own_id,)
        if key in self.objects:
            return 409, {"message": "%s already exists" % "/".join(key)}
        record["flow_id"] = key[0]
        self.objects[key] = record
        return 200, record

    def task_artifacts(self, task: Key, attempt: Optional[int]) -> List[Dict[str, Any]]:
        """The artifacts of ``attempt``, or of the latest attempt that registered any."""
        records = self.artifacts.get(task, [])
        if attempt is None and records:
            attempt = max(int(record.get("attempt_id", 0)) for record in records)
        return [record for record in records if int(record.get("attempt_id", 0)) == attempt]

    def filtered_tasks(self, step: Key, field_name: Optional[str],
                       pattern: Optional[str]) -> List[str]:
        """Pathspecs of the step's tasks with a metadata ``field_name`` whose value matches."""
        tasks = [key for key in self.objects if len(key) == 4 and key[:3] == step]
        if field_name is None or pattern is None:
            return ["/".join(key) for key in tasks]
        return ["/".join(key) for key in tasks
                if any(entry.get("field_name") == field_name
                       and re.search(pattern, str(entry.get("value", "")))
                       for entry in self.metadata.get(key, []))]


def _route(store: MetadataStore, method: str, path: str,
           query: Dict[str, List[str]], body: Any) -> Tuple[int, Any]:
    """Answer one request of Metaflow's service API: (status, JSON value)."""
    parts = [part for part in path.split("/") if part]
    if parts == ["ping"]:
        return 200, "pong"
    if not parts or parts[0] != "flows":
        return 404, {"message": "no route %s" % path}
    if len(parts) == 1:
        return 200, store.children(())
    # /flows/F[/runs/R[/steps/S[/tasks/T]]] followed by an action
    key: Key = (parts[1],)
    rest = parts[2:]
    for plural in ("runs", "steps", "tasks"):
        if len(rest) >= 2 and rest[0] == plural:
            key += (rest[1],)
            rest = rest[2:]
        else:
            break
    with store.lock:
        if not rest:
            if method == "POST" and len(key) == 1:
                return store.create((), dict(body or {}, flow_id=key[0]))
            record = store.objects.get(key)
            return (200, record) if record is not None else (404, {"message": "not found"})
        action = rest[0]
        if method == "POST" and (action, len(key)) in (("run", 1), ("task", 3)):
            return store.create(key, dict(body or {}))
        if method == "POST" and action == "step" and len(key) == 3:  # /runs/R/steps/S/step
            return store.create(key[:2], dict(body or {}, step_name=key[2]))
        if key not in store.objects:
            return 404, {"message": "%s not found" % "/".join(key)}
        if method == "GET" and action in ("runs", "steps", "tasks") and len(rest) == 1:
            return 200, store.children(key)
        if action == "heartbeat" and method == "POST":
            store.objects[key]["last_heartbeat_ts"] = int(time.time())
            # Metaflow's heartbeat sidecar decodes the body twice: a JSON string of JSON.
            return 200, json.dumps({"wait_time_in_seconds": HEARTBEAT_SECONDS})
        if action == "filtered_tasks" and method == "GET" and len(key) == 3:
            return 200, store.filtered_tasks(key, query.get("metadata_field_name", [None])[0],
                                             query.get("pattern", [None])[0])
        if action == "metadata" and len(key) == 4:
            if method == "POST":
                store.metadata.setdefault(key, []).extend(body or [])
                return 200, body
            return 200, store.metadata.get(key, [])
        if len(key) == 4 and action in ("artifact", "artifacts", "attempt"):
            if method == "POST" and action == "artifact":
                store.artifacts.setdefault(key, []).extend(body or [])
                return 200, body
            attempt = None
            if action == "attempt":  # /attempt/A/artifacts
                attempt, rest = int(rest[1]), rest[2:]
            artifacts = store.task_artifacts(key, attempt)
            if len(rest) == 1:
                return 200, artifacts
            if len(rest) >= 2:  # /artifacts/NAME[/attempt/A]
                if len(rest) == 4 and rest[2] == "attempt":
                    artifacts = store.task_artifacts(key, int(rest[3]))
                named = [record for record in artifacts if record.get("name") == rest[1]]
                return (200, named[0]) if named else (404, {"message": "no artifact"})
        return 404, {"message": "no route %s %s" % (method, path)}


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    """A server for ``host:port`` with an empty store; call ``serve_forever()`` on it."""
    store = MetadataStore()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw.strip() else None
            status, value = _route(store, method, url.path, parse_qs(url.query), body)
            payload = json.dumps(value).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("METADATA_SERVICE_VERSION", SERVICE_VERSION)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PATCH(self) -> None:
            self._answer("PATCH")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the rehearsal reads the flow's output, not the service's

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    make_server(sys.argv[1], int(sys.argv[2])).serve_forever()
