"""Worker of bench/gpu_check.py: join the job's process group, all_reduce, then per mode:

- ``report``: destroy the group and end;
- ``raise-in-collective``: call all_reduce with a tensor of a type the backend cannot
  reduce (uint16), which NCCL and gloo refuse inside the collective;
- ``no-destroy``: end without ``destroy_process_group``.
"""
import os
import sys

import torch
import torch.distributed as dist

mode = sys.argv[1]
if torch.cuda.is_available():
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
else:
    device = torch.device("cpu")
    dist.init_process_group("gloo")
summed = torch.ones(1, device=device)
dist.all_reduce(summed)
name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
print(f"GPU CHECK rank={dist.get_rank()} local_rank={os.environ['LOCAL_RANK']} "
      f"world={dist.get_world_size()} backend={dist.get_backend()} device={device} "
      f"name={name!r} sum={summed.item():g}", flush=True)
if mode == "raise-in-collective":
    dist.all_reduce(torch.ones(1, dtype=torch.uint16, device=device))
if mode != "no-destroy":
    dist.destroy_process_group()
