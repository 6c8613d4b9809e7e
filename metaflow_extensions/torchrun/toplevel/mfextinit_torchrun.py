"""Metaflow extension entry: what ``from metaflow import ...`` gets from this package.

Metaflow copies the public names of the module named here into its own
namespace on every ``import metaflow``; that module imports no torch.
"""

toplevel = "torchrun_toplevel"
