"""Property-based checks of bad input to the backend: a clear error or a correct run, never a crash."""

import math
import subprocess
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

from rendezvous.endpoint import parse_endpoint
from rendezvous.errors import ConfigError
from rendezvous.settings import RendezvousSettings
from harness.torchrun_nodes import SCRIPTS

KEYS = st.sampled_from(
    ["join_timeout", "heartbeat_interval", "heartbeat_timeout", "poll_interval", "close_timeout",
     "timeout", "join_timout", "rank", ""]
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 10**6).map(str),
    st.text(max_size=8),
)


# Generation is cheap but the machine may be busy: no timing health checks.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_settings_are_valid_or_refused_with_config_error(config):
    try:
        settings = RendezvousSettings.from_config(config)
    except ConfigError as error:
        assert "--rdzv-conf" in str(error) or "unknown" in str(error)
        return
    for value in vars(settings).values():
        assert math.isfinite(value) and value > 0
    assert settings.heartbeat_timeout > settings.heartbeat_interval


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


CONF_STRINGS = st.lists(
    st.tuples(KEYS, st.sampled_from(["1", "30", "0", "-2", "x", "", "1e9", "inf"])), max_size=3
).map(lambda pairs: ",".join(f"{key}={value}" for key, value in pairs))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(conf=st.one_of(CONF_STRINGS, st.sampled_from(["join_timeout", ",,", "=5", "a=b=c"])))
def test_rdzv_conf_through_a_real_launch(conf, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("conf")
    env = {"MF_PARALLEL_NODE_INDEX": "0", "MF_PARALLEL_NUM_NODES": "1",
           "MF_PARALLEL_MAIN_IP": "127.0.0.1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rendezvous", "--rdzv-backend=metaflow", f"--rdzv-id=prop-{workdir.name}",
         f"--rdzv-conf={conf}", str(SCRIPTS / "allreduce.py")],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=90,
    )
    output = result.stdout + result.stderr
    if result.returncode == 0:
        assert "sum=1" in output
    else:
        assert "Traceback" not in output, output
        assert "metaflow rendezvous: " in output, output
