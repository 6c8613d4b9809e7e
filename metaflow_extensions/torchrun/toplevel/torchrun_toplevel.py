"""Names ``from metaflow import ...`` offers: ``TorchrunFailed``, ``TorchrunResult``,
``TorchrunSingleNodeMultiGPU``.

Every public name here becomes a name of ``metaflow``; keep it to those. The two
dunder names are how Metaflow reports this extension in its version line; setup.py
reads the package's version from here. Nothing imported here imports torch.
"""

from ..plugins.errors import TorchrunFailed
from ..plugins.result import TorchrunResult
from ..plugins.single_node import TorchrunSingleNodeMultiGPU

__mf_extensions__ = "torchrun"
__version__ = "0.3.0"

__all__ = ["TorchrunFailed", "TorchrunResult", "TorchrunSingleNodeMultiGPU"]
