"""The agent's side of hang diagnosis: notice a long wait, gather every rank on node 0, report.

Nothing crosses the network while no rank waits long. Each node reads its
own workers' progress files (``probe``) once per second. When one of its
ranks has waited in a collective for ``hang_timeout``, it tells node 0
(``hang/suspected``); node 0 asks every node (``hang/gather``), each answers
with its ranks' positions and stacks (``hang/state/<n>/<node>``), node 0
diagnoses them (``diagnosis.diagnose``) and publishes the report
(``hang/report``), which every node logs and keeps in ``report.json`` in its
hang directory, where the card reads it. While the report
says hung, node 0 gathers again every ``recheck`` seconds, so the report
stays current and says when the wait is over; with ``hang_fail_after`` it
fails the job once the hang has lasted that long.

Each node waits on its own key (``hang/wake/<i>``) over a connection of its
own, as the watcher's change thread does; keys are named in ``rendezvous.keys``.
"""

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from typing import Dict, Optional

from torch.distributed import DistError, Store

from ..errors import StoreUnreachableError
from ..failure import Failure, FailureKind
from ..keys import JobKeys
from ..settings import RendezvousSettings
from ..store import BoundedConnection, connect_store
from ..topology import Topology
from ..torch_compat import FLIGHT_RECORDER_SIZE_VAR
from ..outcome import say
from ..watcher import Watcher, wait_for_wake
from . import probe, workers
from .diagnosis import diagnose
from .records import HangReport, snapshot_from_dict

logger = logging.getLogger(__name__)

# The directory of the workers' sitecustomize, which starts the probe.
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
# The workers' flight recorder's size where the user set none: torch 2.13's default, which
# earlier releases lack (some record nothing without it; see rendezvous.torch_compat).
FLIGHT_RECORDER_ENTRIES = 2000
# How long node 0 waits for every node's answer.
_ANSWER_TIMEOUT = 10.0
# How often a report is renewed while the hang lasts, at most.
_RECHECK_MAX = 60.0


class HangWatch:
    """Hang diagnosis on one node: two daemon threads and the node's hang directory.

    - The detect thread reads this node's progress files every second; when a
      rank has waited in a collective for ``hang_timeout``, it asks node 0 for
      a diagnosis, at most once per ``recheck``. On node 0 it also asks again
      every ``recheck`` while the last report says hung.
    - The listen thread waits on this node's wake key. Woken, it answers a
      gather with this node's snapshot, and logs and keeps a new report. On
      node 0 it also runs the gathers and publishes their reports.

    A failing store ends both threads quietly: the watcher fails the job for it.

    Args:
        keys, settings, topology: the job's keys, settings and this node's place.
        host, port: node 0's store.
        watcher: this node's ``Watcher``: whether the job failed already (its ranks are
            going away, and a diagnosis of what is left would replace the last true one),
            and how to fail it for ``hang_fail_after``.
        directory: where the workers write their progress, and the report is kept;
            a temporary directory (removed at ``stop``) when None.
    """

    def __init__(
        self,
        keys: JobKeys,
        settings: RendezvousSettings,
        topology: Topology,
        host: str,
        port: int,
        watcher: Watcher,
        directory: Optional[str] = None,
    ):
        self._keys = keys
        self._settings = settings
        self._topology = topology
        self._host = host
        self._port = port
        self._watcher = watcher
        self._owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="metaflow-rdzv-hangs-")
        os.makedirs(self.directory, exist_ok=True)
        limits = [settings.hang_timeout, _RECHECK_MAX]
        if settings.hang_fail_after:
            limits.append(settings.hang_fail_after)
        self.recheck = max(1.0, min(limits))
        self._report: Optional[HangReport] = None
        self._hung_since: Optional[float] = None
        self._failed = False
        self._last_gather = -float("inf")
        self._stop_event = threading.Event()
        self._calls: Optional[BoundedConnection] = None
        self._threads = [
            threading.Thread(target=self._detect, name="metaflow-rdzv-hang-detect", daemon=True),
            threading.Thread(target=self._listen, name="metaflow-rdzv-hang-listen", daemon=True),
        ]

    def worker_environment(self, environment: Dict[str, str]) -> Dict[str, str]:
        """What the workers need in ``environment`` to start the probe (``PYTHONPATH`` first),
        and a flight recorder that records, where the user did not size it."""
        path = environment.get("PYTHONPATH", "")
        needed = {
            probe.DIRECTORY_VAR: self.directory,
            probe.AGENT_PID_VAR: str(os.getpid()),
            "PYTHONPATH": SITE_DIR + (os.pathsep + path if path else ""),
        }
        if FLIGHT_RECORDER_SIZE_VAR not in environment:
            needed[FLIGHT_RECORDER_SIZE_VAR] = str(FLIGHT_RECORDER_ENTRIES)
        return needed

    def start(self) -> None:
        """Connect, create node 0's counters, start both threads.

        Raises:
            StoreUnreachableError: node 0's store cannot be reached.
        """
        timeout = self._settings.heartbeat_timeout
        self._calls = BoundedConnection(
            connect_store(self._host, self._port, timeout), f"{self._host}:{self._port}", timeout
        )
        if self._topology.is_control:
            keys = self._keys
            self._calls.call(lambda store: [
                store.add(key, 0) for key in (keys.hang_suspected, keys.hang_gather, keys.hang_reported)
            ])
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End both threads (bounded) and remove a temporary directory."""
        self._stop_event.set()
        wake_key = self._keys.hang_wake(self._topology.node_index)
        try:
            if self._calls is not None:
                self._calls.call(lambda store: store.set(wake_key, "1"))
        except StoreUnreachableError:
            pass  # the listen thread's wait fails by itself once node 0 is gone
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(1.0)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def last_report(self) -> Optional[HangReport]:
        """The newest report this node received, None before the first."""
        return self._report

    # Detecting (every node)

    def _detect(self) -> None:
        last_asked = -float("inf")
        warned = False
        while not self._stop_event.wait(probe.INTERVAL):
            now = time.monotonic()
            records = workers.progress(self.directory)
            if not warned and any(not record.get("positions_known", True) for record in records):
                warned = True
                say(f"metaflow rendezvous (node {self._topology.node_index}): hang diagnosis "
                     f"is off: this torch has no flight recorder to read the ranks' positions "
                     f"from; a newer torch has one (set hang_timeout=0 to silence this)")
            waiting_long = any(
                waited >= self._settings.hang_timeout for waited in workers.waits(records)
            )
            renew = (self._topology.is_control and self._report is not None
                     and self._report.hung and now - self._last_gather >= self.recheck)
            if (waiting_long and now - last_asked >= self.recheck) or renew:
                last_asked = now
                try:
                    self._ask_node_0()
                except StoreUnreachableError:
                    return

    def _ask_node_0(self) -> None:
        keys = self._keys
        self._calls.call(lambda store: (store.add(keys.hang_suspected, 1),
                                        store.set(keys.hang_wake(0), "1")))

    # Listening (every node); gathering (node 0)

    def _listen(self) -> None:
        keys = self._keys
        wake_key = keys.hang_wake(self._topology.node_index)
        counters = [keys.hang_suspected, keys.hang_gather, keys.hang_reported]
        seen = {"suspected": 0, "gather": 0, "reported": 0}
        try:
            store = connect_store(self._host, self._port, self._settings.heartbeat_timeout)
            while wait_for_wake(store, wake_key, self._stop_event):
                suspected, gather, reported = (int(raw) for raw in store.multi_get(counters))
                if self._topology.is_control:
                    if suspected > seen["suspected"]:
                        seen["suspected"] = suspected
                        if time.monotonic() - self._last_gather >= self.recheck - 1.0:
                            self._gather(store)
                elif gather > seen["gather"]:
                    seen["gather"] = gather
                    self._answer(store, gather)
                if reported > seen["reported"]:
                    seen["reported"] = reported
                    self._receive(HangReport.from_dict(json.loads(store.get(keys.hang_report))))
        except (DistError, RuntimeError, StoreUnreachableError, ValueError) as error:
            if not self._stop_event.is_set():
                logger.debug("metaflow rendezvous: hang watch ended: %s", error)

    def _answer(self, store: Store, gather: int) -> None:
        records = workers.progress(self.directory)
        snapshots = workers.snapshot(self.directory, self._topology.node_index, records)
        answer = json.dumps([asdict(snapshot) for snapshot in snapshots])
        store.set(self._keys.hang_state(gather, self._topology.node_index), answer)

    def _gather(self, store: Store) -> None:
        """Node 0: ask every node, diagnose what came back, publish the report; nothing once
        the job failed."""
        if self._watcher.failure() is not None:
            return
        keys = self._keys
        self._last_gather = time.monotonic()
        num_nodes = self._topology.num_nodes
        gather = store.add(keys.hang_gather, 1)
        others = list(range(1, num_nodes))
        if others:
            store.multi_set([keys.hang_wake(node) for node in others], ["1"] * len(others))
        records = workers.progress(self.directory)
        snapshots = workers.snapshot(self.directory, self._topology.node_index, records)
        answers = [keys.hang_state(gather, node) for node in others]
        deadline = time.monotonic() + _ANSWER_TIMEOUT
        silent = []
        for node, key in zip(others, answers):
            remaining = max(0.01, deadline - time.monotonic())
            if not self._calls.wait([key], time.monotonic() + remaining):
                silent.append(node)
                continue
            snapshots.extend(snapshot_from_dict(item) for item in json.loads(store.get(key)))
            store.delete_key(key)  # a long hang is gathered again and again
        now = time.time()
        world = max([int(record.get("world_size", 0)) for record in records] + [0])
        report = diagnose(
            snapshots, self._settings.hang_timeout, world=range(world), silent_nodes=silent,
            hung_for=0.0 if self._hung_since is None else now - self._hung_since, time=now,
        )
        self._hung_since = (self._hung_since or now) if report.hung else None
        # Every thread of every rank stays here; the other nodes get the rest.
        self._keep(report)
        store.set(keys.hang_report, json.dumps(report.without_threads().to_dict()))
        store.add(keys.hang_reported, 1)
        store.multi_set([keys.hang_wake(node) for node in range(num_nodes)], ["1"] * num_nodes)
        self._fail_if_hung_too_long(report)

    def _fail_if_hung_too_long(self, report: HangReport) -> None:
        fail_after = self._settings.hang_fail_after
        if self._failed or not fail_after or not report.hung or report.hung_for < fail_after:
            return
        self._failed = True
        culprit = report.culprits[0] if report.culprits else None
        self._watcher.publish_failure(Failure(
            kind=FailureKind.HUNG,
            message=f"{report.summary} (hung for {report.hung_for:.0f} s; hang_fail_after="
                    f"{fail_after:g})",
            node_index=None if culprit is None else culprit.node,
            rank=None if culprit is None else culprit.rank,
            local_rank=None if culprit is None else culprit.local_rank,
            traceback_tail="\n".join(report.details()[1:]),
            hang=report.without_threads(),
        ))

    # Reports (every node)

    def _keep(self, report: HangReport) -> None:
        """Write ``report`` to this node's ``report.json``, for the card."""
        try:
            probe.write_json(os.path.join(self.directory, probe.REPORT_FILE), report.to_dict())
        except OSError:
            pass

    def _receive(self, report: HangReport) -> None:
        """Keep ``report`` for the card and the launcher (node 0 kept its own, whole), and log it."""
        previous = self._report
        self._report = report
        if not self._topology.is_control:
            self._keep(report)
        # Each node says it: the nodes' logs are apart on a cluster, interleaved in a local run.
        prefix = f"metaflow rendezvous (node {self._topology.node_index}): "
        if report.hung and previous is not None and previous.shape == report.shape:
            say(f"{prefix}still hung: {report.summary}")
        elif report.hung:
            lines = report.details()
            say(f"{prefix}hang: {lines[0]}")
            for line in lines[1:]:
                say(f"{prefix}  {line}")
            if self._topology.is_control:
                path = os.path.join(self.directory, probe.REPORT_FILE)
                say(f"{prefix}  every thread's stack of every rank: {path}")
        elif previous is not None and previous.hung:
            say(f"{prefix}the hang is over: {report.summary}")


__all__ = ["HangWatch", "SITE_DIR"]
