"""rendezvous/topology.py: the job's layout read from Metaflow's MF_PARALLEL_* variables, and back."""

import pytest

from rendezvous.errors import TopologyError
from rendezvous.topology import Topology, read_topology


ENV = {"MF_PARALLEL_NODE_INDEX": "1", "MF_PARALLEL_NUM_NODES": "3", "MF_PARALLEL_MAIN_IP": "10.0.0.5"}


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


def test_topology_environment_reads_back_as_the_same_topology():
    for topology in (Topology(1, 3, "10.0.0.5"), Topology(0, 2, "::1", "7", 29500)):
        assert read_topology(topology.environment()) == topology
