"""Pure logic of the backend: settings, endpoint, topology, registration, failure text."""

import json
import os
import subprocess
import sys

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry

import rendezvous
from rendezvous.endpoint import DERIVED_PORT_BASE, DERIVED_PORT_SPAN, derive_port, parse_endpoint
from rendezvous.errors import ConfigError, TopologyError
from rendezvous.errors import JobFailedError, JoinTimeoutError, RestartAfterFinishError
from rendezvous.failure import Failure, FailureKind
from rendezvous.failures import agent_failure, child_failure, encode_failure, parse_failures, root_cause
from rendezvous.outcome import LINE_PREFIX, read_outcome, report
from rendezvous._entry_point import create_handler
from rendezvous.network import interface_with_address, socket_ifname_defaults
from rendezvous.settings import RendezvousSettings
from rendezvous.topology import read_topology

ENV = {"MF_PARALLEL_NODE_INDEX": "1", "MF_PARALLEL_NUM_NODES": "3", "MF_PARALLEL_MAIN_IP": "10.0.0.5"}


def test_settings_defaults_and_overrides():
    assert RendezvousSettings.from_config({"timeout": "900"}) == RendezvousSettings()
    settings = RendezvousSettings.from_config({"join_timeout": "5", "heartbeat_timeout": "2.5"})
    assert (settings.join_timeout, settings.heartbeat_timeout) == (5.0, 2.5)
    assert RendezvousSettings().join_timeout == 600


@pytest.mark.parametrize(
    "config, message",
    [
        ({"join_timout": "5"}, "unknown --rdzv-conf key(s) join_timout"),
        ({"join_timeout": "soon"}, "join_timeout='soon': must be a positive number"),
        ({"join_timeout": "0"}, "join_timeout=0.0: must be a positive number"),
        ({"join_timeout": "nan"}, "must be a positive number"),
        ({"heartbeat_timeout": "1", "heartbeat_interval": "2"}, "must be larger than"),
    ],
)
def test_settings_refuse_bad_values(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RendezvousSettings.from_config(config)


def test_derived_port_is_stable_and_spread():
    assert derive_port("job-a") == derive_port("job-a")
    ports = {derive_port(f"job-{i}") for i in range(200)}
    assert all(DERIVED_PORT_BASE <= port < DERIVED_PORT_BASE + DERIVED_PORT_SPAN for port in ports)
    assert len(ports) > 190


@pytest.mark.parametrize(
    "endpoint, expected",
    [
        ("", ("10.0.0.5", 29400)),
        ("host", ("host", 29400)),
        ("host:123", ("host", 123)),
        (":123", ("10.0.0.5", 123)),
        ("[::1]:123", ("::1", 123)),
        ("[::1]", ("::1", 29400)),
        ("fe80::1", ("fe80::1", 29400)),
    ],
)
def test_parse_endpoint(endpoint, expected):
    assert parse_endpoint(endpoint, "10.0.0.5", 29400) == expected


@pytest.mark.parametrize("endpoint", ["host:0", "host:70000", "host:http", "[::1:5", "[::1]x"])
def test_parse_endpoint_refuses(endpoint):
    with pytest.raises(ConfigError, match="--rdzv-endpoint"):
        parse_endpoint(endpoint, "h", 1)


def test_topology_read():
    topology = read_topology(ENV)
    assert (topology.node_index, topology.num_nodes, topology.main_ip) == (1, 3, "10.0.0.5")
    assert not topology.is_control


@pytest.mark.parametrize(
    "change, message",
    [
        ({"MF_PARALLEL_MAIN_IP": ""}, "MF_PARALLEL_MAIN_IP is not set"),
        ({"MF_PARALLEL_NUM_NODES": "two"}, "MF_PARALLEL_NUM_NODES='two' is not an integer"),
        ({"MF_PARALLEL_NODE_INDEX": "3"}, "out of range for MF_PARALLEL_NUM_NODES=3"),
        ({"MF_PARALLEL_NODE_INDEX": "-1"}, "out of range"),
        ({"MF_PARALLEL_NUM_NODES": "0"}, "at least one node"),
        ({"MF_MASTER_PORT": "http"}, "MF_MASTER_PORT='http' is not a TCP port.*@kubernetes"),
        ({"MF_MASTER_PORT": "70000"}, "MF_MASTER_PORT='70000' is not a TCP port"),
    ],
)
def test_topology_refuses(change, message):
    with pytest.raises(TopologyError, match=message):
        read_topology({**ENV, **change})


def params(nnodes=(3, 3), endpoint="", **config):
    return RendezvousParameters("metaflow", endpoint, "run-1", nnodes[0], nnodes[1], **config)


def test_create_handler_uses_topology_and_derived_port(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MF_MASTER_PORT", "None")  # what @kubernetes exports without a port
    handler = create_handler(params())
    assert (handler.host, handler.port) == ("10.0.0.5", derive_port("run-1"))
    assert create_handler(params(endpoint="[::1]:4000")).endpoint == "[::1]:4000"


def test_port_declared_by_kubernetes_is_the_default_and_an_endpoint_port_wins(monkeypatch):
    for key, value in {**ENV, "MF_MASTER_PORT": "3344"}.items():
        monkeypatch.setenv(key, value)
    assert read_topology().declared_port == 3344
    assert create_handler(params()).endpoint == "10.0.0.5:3344"
    assert create_handler(params(endpoint=":4000")).endpoint == "10.0.0.5:4000"


def test_socket_ifname_names_the_interface_towards_node_0_unless_the_user_chose():
    assert interface_with_address("127.0.0.1") == "lo"
    assert interface_with_address("::1") == "lo"
    assert interface_with_address("198.18.255.254") is None  # held by no interface here
    chosen, interface = socket_ifname_defaults("127.0.0.1", 29500, {})
    assert interface == "lo"
    assert chosen == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "=lo"}  # "=": exact name
    chosen, _ = socket_ifname_defaults("127.0.0.1", 29500, {"GLOO_SOCKET_IFNAME": "eth1"})
    assert chosen == {"NCCL_SOCKET_IFNAME": "=lo"}
    assert socket_ifname_defaults("node0.invalid", 29500, {}) == ({}, None)


@pytest.mark.parametrize("nnodes, shown", [((2, 2), "--nnodes=2,"), ((1, 3), "--nnodes=1:3,")])
def test_create_handler_refuses_nnodes_mismatch(monkeypatch, nnodes, shown):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TopologyError, match=f"{shown} but this Metaflow step runs 3 nodes.*--nnodes=3"):
        create_handler(params(nnodes))


def test_register_is_idempotent_and_entry_point_declared():
    rendezvous.register()
    rendezvous.register()
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="torchrun.handlers") if ep.name == "metaflow"]
    assert entry.load()() is rendezvous_handler_registry._registry["metaflow"]


def test_entry_point_loads_when_our_modules_import_torch_first():
    # Importing one of our torch-importing modules first makes torch load the
    # entry point in the middle of that import: it must still register.
    code = (
        "import rendezvous.endpoint\n"
        "from torch.distributed.elastic.rendezvous import rendezvous_handler_registry as r\n"
        "print('metaflow' in r._registry)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr


def test_a_rank_failure_becomes_a_record_with_its_rank_and_error(tmp_path):
    error_file = tmp_path / "error.json"
    error_file.write_text('{"message": {"message": "ValueError: boom", "extraInfo": {"timestamp": "1"}}}')
    failure = ProcessFailure(local_rank=1, pid=10, exitcode=1, error_file=str(error_file))
    record = child_failure(ChildFailedError("train.py", {3: failure}), node_index=1)
    assert (record.kind, record.node_index, record.rank, record.local_rank) == (FailureKind.RAISED, 1, 3, 1)
    assert (record.exit_code, record.signal, record.message) == (1, None, "ValueError: boom")
    assert record.summary == "node 1 failed first: global rank 3 (local rank 1) exited with code 1: ValueError: boom"
    killed = ProcessFailure(local_rank=0, pid=11, exitcode=-9, error_file="<N/A>")
    record = child_failure(ChildFailedError("x", {2: killed}), node_index=0)
    assert (record.kind, record.rank, record.exit_code, record.signal) == (FailureKind.KILLED, 2, None, "SIGKILL")
    assert record.summary == "the control node (node 0) failed first: global rank 2 (local rank 0) was killed by SIGKILL"
    other = agent_failure(KeyError("k"), node_index=2)
    assert (other.kind, other.message, other.node_index, other.rank) == (FailureKind.RENDEZVOUS, "KeyError: 'k'", 2, None)


def test_the_failure_written_first_is_named_within_one_second(tmp_path):
    # rank 3 raised; rank 2 lost it as a peer in the same second, its file written later
    failures = {}
    for rank, message, written in ((2, "RuntimeError: Connection closed by peer", 2_000),
                                   (3, "ValueError: bad batch on rank 3", 1_000)):
        error_file = tmp_path / f"error-{rank}.json"
        error_file.write_text(json.dumps({"message": {"message": message, "extraInfo": {"timestamp": "7"}}}))
        os.utime(error_file, ns=(written, written))
        failures[rank] = ProcessFailure(local_rank=rank - 2, pid=rank, exitcode=1, error_file=str(error_file))
    # rank 1 was stopped by its agent in that second: no error file
    failures[1] = ProcessFailure(local_rank=1, pid=1, exitcode=-15, error_file="<N/A>")
    failures[1].timestamp = 7
    record = child_failure(ChildFailedError("train.py", failures), node_index=0)
    assert (record.rank, record.local_rank, record.kind) == (3, 1, FailureKind.RAISED)
    assert record.message == "ValueError: bad batch on rank 3"


def test_a_failure_saying_a_peer_went_away_is_secondary(tmp_path):
    error_file = tmp_path / "error.json"
    error_file.write_text(
        '{"message": {"message": "RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer",'
        ' "extraInfo": {"timestamp": "1"}}}'
    )
    failure = ProcessFailure(local_rank=0, pid=10, exitcode=1, error_file=str(error_file))
    record = child_failure(ChildFailedError("train.py", {0: failure}), node_index=0)
    assert record.kind == FailureKind.PEER_LOST and record.secondary


def test_a_record_travels_through_the_store_whole(tmp_path):
    callstack = "Traceback (most recent call last):\n" + "".join(
        f'  File "train.py", line {n}, in step\n\tcall()\n' for n in range(30)
    ) + "ValueError: boom"
    error_file = tmp_path / "error.json"
    error_file.write_text(json.dumps({"message": {
        "message": "ValueError: boom", "extraInfo": {"py_callstack": callstack, "timestamp": "1"}}}))
    failed = ChildFailedError("train.py", {
        3: ProcessFailure(local_rank=1, pid=10, exitcode=1, error_file=str(error_file)),
        2: ProcessFailure(local_rank=0, pid=11, exitcode=-15, error_file="<N/A>"),
    })
    record = child_failure(failed, node_index=1)
    assert record.traceback_tail.splitlines() == callstack.splitlines()[-20:]
    lost = Failure(FailureKind.PEER_LOST, "lost a peer", node_index=0)
    raw = (encode_failure(lost) + encode_failure(record)).encode()
    assert raw.count(b"\n") == 2  # one line per record, whatever the traceback holds
    assert parse_failures(raw) == [lost, record]
    assert root_cause(parse_failures(raw)) == record
    # No error file: the record stands without a tail. A line that is not a record is skipped.
    assert child_failure(ChildFailedError("x", {2: failed.failures[2]}), 1).traceback_tail == ""
    assert parse_failures(b"{not json\n" + encode_failure(lost).encode()) == [lost]
    # A kind another version wrote counts as secondary.
    newer = json.dumps({**lost.to_dict(), "kind": "from-the-future"}).encode()
    assert parse_failures(newer)[0].kind == FailureKind.PEER_LOST


def test_root_cause_prefers_a_node_own_failure_over_an_earlier_peer_lost_one():
    lost = Failure(FailureKind.PEER_LOST, "Connection closed by peer", node_index=0, rank=0, local_rank=0, exit_code=1)
    raised = Failure(FailureKind.RAISED, "ValueError: boom", node_index=1, rank=3, local_rank=1, exit_code=1)
    later = Failure(FailureKind.NODE_LOST, "it stopped sending heartbeats", node_index=2)
    assert root_cause([lost, raised, later]) == raised
    assert root_cause([lost]) == lost
    assert root_cause([]) is None
    error = JobFailedError(raised)
    assert (error.node_index, error.failure(0)) == (1, raised)
    assert str(error) == "node 1 failed first: global rank 3 (local rank 1) exited with code 1: ValueError: boom"


def test_every_backend_error_is_a_record_of_its_kind():
    never = JoinTimeoutError("round 0 did not complete; missing nodes: 2, 3", [2, 3]).failure(0)
    assert (never.kind, never.node_index) == (FailureKind.NODE_NEVER_ARRIVED, 2)
    assert never.summary == "node 2 never arrived: round 0 did not complete; missing nodes: 2, 3"
    refused = RestartAfterFinishError("its workers failed and it asked for a restart").failure(1)
    assert (refused.kind, refused.node_index) == (FailureKind.RESTART_REFUSED, 1)
    config = ConfigError("join_timeout='x' is not a number").failure(1)
    assert (config.kind, config.summary) == (FailureKind.RENDEZVOUS, "ConfigError: join_timeout='x' is not a number")


def test_the_outcome_file_carries_the_record(tmp_path, monkeypatch, capsys):
    path = tmp_path / "outcome.json"
    monkeypatch.setenv("METAFLOW_RENDEZVOUS_OUTCOME_FILE", str(path))
    record = Failure(FailureKind.KILLED, "", node_index=1, rank=3, local_rank=1, signal="SIGKILL",
                     traceback_tail="Traceback ...\nValueError: boom")
    report(record)
    assert read_outcome(str(path)) == record
    assert capsys.readouterr().err == f"{LINE_PREFIX}{record.summary}\n"
    assert read_outcome(str(tmp_path / "missing.json")) is None
    path.write_text("{}")
    assert read_outcome(str(path)) is None
