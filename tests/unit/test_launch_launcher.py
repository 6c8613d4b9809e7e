"""launch/launcher.py: the original package's output options are refused."""

import pytest

from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.launch.launcher import refuse_removed_options

pytestmark = pytest.mark.timeout(300)


def test_removed_options_of_the_original_are_refused():
    refuse_removed_options({"push_results_dir_to_cloud": None, "local_output_dir": None})
    for name in ("push_results_dir_to_cloud", "local_output_dir", "cloud_output_dir"):
        with pytest.raises(TorchrunArgumentError, match=f"^{name} is not supported: .* Instead, "):
            refuse_removed_options({name: False})
