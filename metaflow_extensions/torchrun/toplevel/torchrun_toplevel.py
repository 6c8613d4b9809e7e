"""Names ``from metaflow import ...`` offers: ``TorchrunSingleNodeMultiGPU``.

Every public name here becomes a name of ``metaflow``; keep it to those.
"""

from ..plugins.single_node import TorchrunSingleNodeMultiGPU
