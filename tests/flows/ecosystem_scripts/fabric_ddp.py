"""A Lightning Fabric DDP training script, written as for ``torchrun``.

Fabric finds the ranks and the world in torchrun's environment
(TorchElasticEnvironment) and joins the process group in ``fabric.launch()``; like
most Fabric scripts, this one never destroys the group.
"""
import argparse

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch.utils.data import DataLoader

from synthetic_data import FEATURES, regression_dataset, report

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, required=True, help="processes per node")
parser.add_argument("--num-nodes", type=int, required=True)
parser.add_argument("--samples", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=8)
args = parser.parse_args()

fabric = Fabric(accelerator="cpu", strategy="ddp", devices=args.devices, num_nodes=args.num_nodes)
fabric.launch()

model = torch.nn.Linear(FEATURES, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
model, optimizer = fabric.setup(model, optimizer)
# setup_dataloaders adds a DistributedSampler over the whole world
data = fabric.setup_dataloaders(DataLoader(regression_dataset(args.samples), batch_size=args.batch_size))

samples_seen = 0
for inputs, targets in data:
    optimizer.zero_grad()
    loss = F.mse_loss(model(inputs), targets)
    fabric.backward(loss)
    optimizer.step()
    samples_seen += len(inputs)

total = fabric.all_reduce(torch.tensor(samples_seen), reduce_op="sum")
report("fabric", fabric.global_rank, fabric.local_rank, fabric.world_size, int(total), model)
