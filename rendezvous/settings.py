"""Settings of the ``metaflow`` backend: every ``--rdzv-conf`` key in one dataclass."""

import math
from dataclasses import dataclass, fields
from typing import Mapping

from .errors import ConfigError

# Keys accepted and ignored, so that a user's typo in one of our keys can
# still be refused: ``timeout``, which torch's launcher adds to every backend's
# config on its own (LaunchConfig injects it), and ``poll_interval``, which
# earlier versions polled the store at; nothing polls now (see
# ``rendezvous.watcher``), and old command lines keep working.
_KEYS_IGNORED = frozenset({"timeout", "poll_interval"})
# Keys whose 0 means "off".
_KEYS_OFF_AT_ZERO = frozenset({"hang_timeout", "hang_fail_after"})


@dataclass(frozen=True)
class RendezvousSettings:
    """Timeouts of the ``metaflow`` backend, in seconds.

    Each field is also an ``--rdzv-conf`` key of the same name.

    Attributes:
        join_timeout: how long a round waits for every node to arrive before it
            fails naming the missing nodes.
        heartbeat_interval: how often a node tells the store it is alive.
        heartbeat_timeout: how long a node may stay silent (agent killed,
            network cut) before the job is failed naming it; also how long
            node 0's store may answer nothing before it counts as unreachable.
        close_timeout: how long node 0 keeps the store up at the end so the
            other nodes can read how the job ended.
        hang_timeout: how long a rank may wait in one collective before the
            job counts as hung and node 0 diagnoses it (``rendezvous.hangs``);
            0 turns hang diagnosis off. Well below gloo's (1800 s) and NCCL's
            (600 s) own timeouts, which fail the job without saying why.
        hang_fail_after: 0 (the default) only reports a hang, for as long as it
            lasts; a positive number fails the job once it has been reported
            hung for that long, so that ``@retry`` can take over.
    """

    join_timeout: float = 600.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 15.0
    close_timeout: float = 5.0
    hang_timeout: float = 300.0
    hang_fail_after: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            zero_allowed = field.name in _KEYS_OFF_AT_ZERO
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and (value > 0 or (zero_allowed and value == 0))):
                raise ConfigError(f"--rdzv-conf {field.name}={value!r}: {_must_be(field.name)}.")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"--rdzv-conf heartbeat_timeout={self.heartbeat_timeout} must be larger than "
                f"heartbeat_interval={self.heartbeat_interval}, or every node looks dead."
            )

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> "RendezvousSettings":
        """Build settings from ``RendezvousParameters.config`` (strings from the command line).

        Raises:
            ConfigError: an unknown key, or a value that is not a positive number.
        """
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(config) - known - _KEYS_IGNORED)
        if unknown:
            raise ConfigError(
                f"unknown --rdzv-conf key(s) {', '.join(unknown)} for the metaflow backend; "
                f"known keys: {', '.join(sorted(known))}."
            )
        values = {}
        for key in known & set(config):
            raw = config[key]
            try:
                values[key] = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(f"--rdzv-conf {key}={raw!r}: {_must_be(key)}.") from None
        return cls(**values)


def _must_be(key: str) -> str:
    if key in _KEYS_OFF_AT_ZERO:
        return "must be a number of seconds, or 0 for off"
    return "must be a positive number of seconds"
