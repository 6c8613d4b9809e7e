"""rendezvous/endpoint.py: the derived port, --rdzv-endpoint parsing (hypothesis too), and
store_address, where the card's relay finds node 0's store."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rendezvous.endpoint import DERIVED_PORT_BASE, DERIVED_PORT_SPAN, derive_port, parse_endpoint
from rendezvous.errors import ConfigError


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


# Generation is cheap but the machine may be busy: no timing health checks.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(st.text(max_size=30))
def test_endpoints_parse_or_are_refused_with_config_error(text):
    try:
        host, port = parse_endpoint(text, "10.0.0.1", 29400)
    except ConfigError as error:
        assert "--rdzv-endpoint" in str(error)
        return
    assert isinstance(host, str) and host
    assert 1 <= port <= 65535


def test_the_task_finds_node_0s_store_where_the_backend_puts_it(monkeypatch):
    """The card's relay connects to store_address(...): the backend's own choice, every case."""
    import pytest
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from rendezvous.endpoint import store_address
    from rendezvous._entry_point import create_handler
    from rendezvous.topology import Topology

    for declared in (None, 29400):
        topology = Topology(1, 2, "10.1.2.3", declared_port=declared)
        for name, value in topology.environment().items():
            monkeypatch.setenv(name, value)
        if declared is None:
            monkeypatch.delenv("MF_MASTER_PORT", raising=False)
        for endpoint in ("", ":24000", "10.9.9.9", "[::1]:29500"):
            params = RendezvousParameters("metaflow", endpoint, "job-a0-c1", 2, 2)
            handler = create_handler(params)
            assert store_address(endpoint, "job-a0-c1", topology) == (
                handler.host, handler.port), (declared, endpoint)
    with pytest.raises(ValueError):  # rendezvous.errors.ConfigError, as the backend raises
        store_address(":0", "job-a0-c1", topology)
