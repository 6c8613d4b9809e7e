"""rendezvous/_entry_point.py: the handler torchrun creates (topology, port, --nnodes), and the
entry point's loading."""

import subprocess
import sys

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters

from rendezvous._entry_point import create_handler, made_handler
from rendezvous.endpoint import derive_port
from rendezvous.errors import TopologyError
from rendezvous.topology import read_topology


ENV = {"MF_PARALLEL_NODE_INDEX": "1", "MF_PARALLEL_NUM_NODES": "3", "MF_PARALLEL_MAIN_IP": "10.0.0.5"}


def params(nnodes=(3, 3), endpoint="", **config):
    return RendezvousParameters("metaflow", endpoint, "run-1", nnodes[0], nnodes[1], **config)


def test_create_handler_uses_topology_and_derived_port(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MF_MASTER_PORT", "None")  # what @kubernetes exports without a port
    handler = create_handler(params())
    assert (handler.host, handler.port) == ("10.0.0.5", derive_port("run-1"))
    assert create_handler(params(endpoint="[::1]:4000")).endpoint == "[::1]:4000"


def test_the_handler_made_last_is_remembered_for_python_m_rendezvous(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    handler = create_handler(params())
    assert made_handler() is handler


def test_port_declared_by_kubernetes_is_the_default_and_an_endpoint_port_wins(monkeypatch):
    for key, value in {**ENV, "MF_MASTER_PORT": "3344"}.items():
        monkeypatch.setenv(key, value)
    assert read_topology().declared_port == 3344
    assert create_handler(params()).endpoint == "10.0.0.5:3344"
    assert create_handler(params(endpoint=":4000")).endpoint == "10.0.0.5:4000"


@pytest.mark.parametrize("nnodes, shown", [((2, 2), "--nnodes=2,"), ((1, 3), "--nnodes=1:3,")])
def test_create_handler_refuses_nnodes_mismatch(monkeypatch, nnodes, shown):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TopologyError, match=f"{shown} but this Metaflow step runs 3 nodes.*--nnodes=3"):
        create_handler(params(nnodes))


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
