"""rendezvous/settings.py: the --rdzv-conf keys, their defaults, what is refused; hypothesis over
values (through a real launch: tests/integration/test_backend_under_torchrun.py)."""

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rendezvous.errors import ConfigError
from rendezvous.settings import RendezvousSettings


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
        ({"hang_timeout": "-1"}, "hang_timeout=-1.0: must be a number of seconds, or 0 for off"),
        ({"hang_fail_after": "later"}, "hang_fail_after='later': must be a number of seconds, or 0"),
    ],
)
def test_settings_refuse_bad_values(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RendezvousSettings.from_config(config)


def test_hang_settings_default_to_report_only_and_zero_turns_them_off():
    assert (RendezvousSettings().hang_timeout, RendezvousSettings().hang_fail_after) == (300, 0)
    settings = RendezvousSettings.from_config({"hang_timeout": "0", "hang_fail_after": "30"})
    assert (settings.hang_timeout, settings.hang_fail_after) == (0, 30)


def test_poll_interval_of_earlier_versions_is_accepted_and_means_nothing():
    assert RendezvousSettings.from_config({"poll_interval": "0.1"}) == RendezvousSettings()
    assert not hasattr(RendezvousSettings(), "poll_interval")


KEYS = st.sampled_from(
    ["join_timeout", "heartbeat_interval", "heartbeat_timeout", "poll_interval", "close_timeout",
     "hang_timeout", "hang_fail_after", "timeout", "join_timout", "rank", ""]
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
    for name, value in vars(settings).items():
        # The hang settings' 0 means off.
        assert math.isfinite(value) and (value > 0 or (name.startswith("hang_") and value == 0))
    assert settings.heartbeat_timeout > settings.heartbeat_interval
