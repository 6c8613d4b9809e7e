"""Metaflow extension entry: registers the ``@torchrun`` step decorator.

Metaflow imports this module on every ``import metaflow``, so nothing here (or in
the decorator module it names) may import torch.
"""

STEP_DECORATORS_DESC = [("torchrun", ".decorator.TorchrunDecorator")]
