"""Worker: a gloo all_reduce, then lines on stdout and stderr, one with bytes that are not UTF-8."""
import argparse
import os
import sys

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--text", default="")
args = parser.parse_args()

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(
    f"rank={dist.get_rank()} world={dist.get_world_size()} group_rank={os.environ['GROUP_RANK']} "
    f"sum={value.item():g} text={args.text}",
    flush=True,
)
print(f"stderr line of rank {dist.get_rank()}", file=sys.stderr, flush=True)
sys.stdout.buffer.write(b"undecodable \xff\xfe bytes of rank " + os.environ["RANK"].encode() + b"\n")
sys.stdout.flush()
dist.destroy_process_group()
