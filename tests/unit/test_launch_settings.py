"""launch/settings.py: the decorator's attributes checked, and the GPUs asked for the step."""

import pytest

from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.launch.settings import (
    _checked_port,
    _checked_timeout,
    _requested_gpus,
)

pytestmark = pytest.mark.timeout(60)


def test_decorator_attribute_checks():
    assert _checked_port("29500") == 29500 and _checked_port(None) is None
    for bad in ("http", 0, 70000, True, -5, "\u00b2"):
        with pytest.raises(TorchrunArgumentError, match="give a TCP port"):
            _checked_port(bad)
    assert _checked_timeout("30") == 30.0
    for bad in (0, -1, "soon", float("inf"), True, None):
        with pytest.raises(TorchrunArgumentError, match="positive number"):
            _checked_timeout(bad)


class _Deco:
    def __init__(self, name, **attributes):
        self.name = name
        self.attributes = attributes


def test_gpus_requested_for_the_step():
    assert _requested_gpus([_Deco("resources", gpu=2)]) == 2
    assert _requested_gpus([_Deco("resources", gpu=None)]) == 0
    assert _requested_gpus([_Deco("retry", times=3)]) == 0
    # @kubernetes takes the larger of its own and @resources' request
    kubernetes = _Deco("kubernetes", gpu="4", cpu="1")
    assert _requested_gpus([_Deco("resources", gpu="2.0", cpu="1"), kubernetes]) == 4
