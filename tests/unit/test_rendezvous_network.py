"""rendezvous/network.py: the interface towards node 0, and the *_SOCKET_IFNAME defaults."""

from rendezvous.network import interface_with_address, socket_ifname_defaults


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
