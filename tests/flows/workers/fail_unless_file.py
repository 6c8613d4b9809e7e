"""Worker: rank 1 raises unless --file exists; then a gloo all_reduce."""
import argparse
import os

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--file", required=True)
args = parser.parse_args()

if os.environ["RANK"] == "1" and not os.path.exists(args.file):
    raise RuntimeError(f"{args.file} is missing")
dist.init_process_group("gloo")
value = torch.tensor([1.0])
dist.all_reduce(value)
print(f"rank={dist.get_rank()} sum={value.item():g}", flush=True)
dist.destroy_process_group()
