"""errors.py (of the extension): TorchrunNotEnabled keeps ``hasattr(current, "torch")`` false."""

import pytest

from metaflow_extensions.torchrun.plugins.errors import TorchrunNotEnabled

pytestmark = pytest.mark.timeout(60)


def test_not_enabled_error_keeps_hasattr_false():
    class Holder:
        @property
        def torch(self):
            raise TorchrunNotEnabled("no")

    assert not hasattr(Holder(), "torch")
