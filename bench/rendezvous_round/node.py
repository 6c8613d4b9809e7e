"""The node side: what one forked node does in a measurement, reported to the parent line by line."""

import os
import random
import signal
import time
from typing import Dict

from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

from metaflow_extensions.torchrun.plugins.worker.bootstrap import die_with_parent
from rendezvous.topology import Topology

from bench.store_ports import LOOPBACK

from .protocol import (MAX_REPORT_BYTES, TIME_RECORD, MeasurementFailed, Options,
                       Pipes, Scenario)


def _rendezvous_parameters(
    scenario: Scenario, index: int, port: int, run_id: str, timeout: float
) -> RendezvousParameters:
    """The parameters torchrun would build for this node, plus what each backend needs."""
    endpoint = f"{LOOPBACK}:{port}"
    config: Dict[str, object] = {}
    bound = str(int(timeout))
    if scenario.backend == "metaflow":
        os.environ.update(Topology(index, scenario.num_nodes, LOOPBACK).environment())
        config["join_timeout"] = bound
    elif scenario.backend == "c10d":
        # Without is_host, c10d guesses the host by comparing the endpoint with
        # this machine's names, which every node on one machine matches.
        config.update(is_host=str(index == 0).lower(), join_timeout=bound)
    else:  # static
        # An int, as torchrun passes --node-rank: static compares it with 0 as is.
        config.update(rank=index, timeout=bound)
    return RendezvousParameters(
        backend=scenario.backend,
        endpoint=endpoint,
        run_id=run_id,
        min_nodes=scenario.num_nodes,
        max_nodes=scenario.num_nodes,
        # c10d would otherwise name nodes (and bind its second store) by socket.getfqdn().
        local_addr=LOOPBACK,
        **config,
    )


def _report(fd: int, kind: str, index: int, value: object) -> None:
    line = f"{kind} {index} {value}".replace("\n", " | ")
    os.write(fd, line.encode("utf-8", "replace")[: MAX_REPORT_BYTES - 1] + b"\n")


def _await_release(fd: int, extra_delay: float = 0.0) -> None:
    """Block until the parent sends the release instant, then sleep until then + ``extra_delay``."""
    record = os.read(fd, TIME_RECORD.size)
    if len(record) != TIME_RECORD.size:
        raise MeasurementFailed("the parent went away before the release")
    (release,) = TIME_RECORD.unpack(record)
    release += extra_delay
    pause = release - time.monotonic()
    if pause > 0:
        time.sleep(pause)


def _run_node(
    scenario: Scenario, index: int, port: int, run_id: str, options: Options, pipes: Pipes
) -> None:
    """Everything one forked node does, reporting each step to the parent."""
    report_fd = pipes.report[1]
    is_restarter = index == scenario.num_nodes - 1
    params = _rendezvous_parameters(scenario, index, port, run_id, options.timeout)
    _report(report_fd, "ready", index, 0)

    _await_release(pipes.go_round[0], scenario.node0_delay if index == 0 else 0.0)
    cpu_before = time.process_time()
    handler = get_rendezvous_handler(params)
    handler.next_rendezvous()
    _report(report_fd, "round", index, time.monotonic())
    # All threads of this node, the store server's on node 0 included.
    _report(report_fd, "cpu", index, time.process_time() - cpu_before)

    if scenario.with_restart:
        _await_release(pipes.go_restart[0])
        if not is_restarter:
            # What the agent's monitor loop does while its workers are healthy.
            # Agents poll on their own cadence, not in step with each other.
            time.sleep(random.uniform(0.0, options.monitor_interval))
            while handler.num_nodes_waiting() == 0:
                time.sleep(options.monitor_interval)
        handler.next_rendezvous()
        _report(report_fd, "restart", index, time.monotonic())

    _await_release(pipes.go_shutdown[0])
    handler.shutdown()
    _report(report_fd, "done", index, 0)
    os.read(pipes.leave[0], 1)


def node_process(
    scenario: Scenario, index: int, port: int, run_id: str, options: Options, pipes: Pipes,
    parent_pid: int,
) -> None:
    """Entry of a forked child: bound its life, run the node, and leave with os._exit."""
    status = 1
    try:
        # The kernel kills this node if the parent dies (and it leaves at once if
        # the parent is already gone); SIGALRM's default action ends it if
        # anything below hangs past the measurement's timeout.
        die_with_parent(signal.SIGKILL, parent_pid)
        signal.alarm(int(options.timeout) + 5)
        pipes.keep_node_ends()
        _run_node(scenario, index, port, run_id, options, pipes)
        status = 0
    except BaseException as error:  # reported to the parent, which fails the measurement
        try:
            _report(pipes.report[1], "error", index, f"{type(error).__name__}: {error}")
        except OSError:
            pass
    finally:
        os._exit(status)
