"""A Hugging Face Accelerate training script on the CPU, written as for ``torchrun``.

``Accelerator(cpu=True)`` sees torchrun's LOCAL_RANK and WORLD_SIZE, joins a gloo
process group (MULTI_CPU) and, in ``prepare``, shards the data loader over the whole
world; the script never calls ``end_training``, so the group is left for the
process's end.
"""
import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from synthetic_data import FEATURES, regression_dataset, report

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--samples", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=8)
args = parser.parse_args()

accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(FEATURES, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
data = DataLoader(regression_dataset(args.samples), batch_size=args.batch_size)
model, optimizer, data = accelerator.prepare(model, optimizer, data)

samples_seen = 0
for inputs, targets in data:
    optimizer.zero_grad()
    loss = F.mse_loss(model(inputs), targets)
    accelerator.backward(loss)
    optimizer.step()
    samples_seen += len(inputs)

total = accelerator.reduce(torch.tensor(samples_seen), reduction="sum")
report(
    "accelerate", accelerator.process_index, accelerator.local_process_index,
    accelerator.num_processes, int(total), model,
)
