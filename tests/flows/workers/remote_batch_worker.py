"""Worker of remote_batch.py: one gloo all_reduce across every rank of every node."""
import os
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
# One write per line, so that the lines of several workers never interleave.
sys.stdout.write(f"rank={dist.get_rank()} world={dist.get_world_size()} sum={value.item():g} "
                 f"master={os.environ['MASTER_ADDR']}\n")
dist.destroy_process_group()
