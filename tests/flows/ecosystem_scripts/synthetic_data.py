"""What the ecosystem scripts next to this file share: their data and how they report.

Each script trains a linear regression on the same small synthetic data set, then
prints one line per rank, read by tests/integration/test_ecosystem.py:

    <name> rank=<global rank> local=<local rank> world=<world size> samples=<n> params=<sum>

``samples`` is the number of samples all ranks trained on together, summed by a
collective of the script's library (the data set's size times the epochs when the
library shards the data over the whole world); ``params`` is the sum of the trained
parameters, the same on every rank when the library kept the replicas in step.
"""
import torch
from torch import nn
from torch.utils.data import TensorDataset

FEATURES = 20


def regression_dataset(samples: int) -> TensorDataset:
    """Noisy linear targets, the same on every rank (fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    targets = inputs @ torch.randn(FEATURES, 1, generator=generator)
    targets += 0.1 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(inputs, targets)


def report(name: str, rank: int, local_rank: int, world_size: int, samples: int, model: nn.Module) -> None:
    """Print the rank's line of the contract above."""
    params = sum(float(parameter.detach().sum()) for parameter in model.parameters())
    print(
        f"{name} rank={rank} local={local_rank} world={world_size} samples={samples} params={params:.6f}",
        flush=True,
    )
