"""An ordinary torchrun script: nothing in it knows about Metaflow."""
import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([float(rank)])
dist.all_reduce(total)
print(
    f"hello from rank {rank} of {world} on node {os.environ['GROUP_RANK']}: "
    f"sum of ranks = {total.item():g} (expected {world * (world - 1) // 2})",
    flush=True,
)
dist.destroy_process_group()
