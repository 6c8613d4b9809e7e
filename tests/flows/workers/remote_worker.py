"""Worker of the rehearsal flows: a gloo all_reduce, then one line with what the rank saw.

With ``--release-file``, each rank first waits (at most two minutes) for that file."""
import argparse
import os
import socket
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--release-file", default="")
args = parser.parse_args()

if args.release_file:
    print(f"WAITING rank={os.environ['RANK']} at={time.time():.3f}", flush=True)
deadline = time.monotonic() + 120
while args.release_file and not os.path.exists(args.release_file) and time.monotonic() < deadline:
    time.sleep(0.1)

dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == args.fail_rank:
    raise RuntimeError(f"rank {rank} failed on purpose")
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(
    f"WORKER rank={rank} world={dist.get_world_size()} "
    f"local_world={os.environ['LOCAL_WORLD_SIZE']} master_port={os.environ['MASTER_PORT']} "
    f"host={socket.gethostname()} sum={value.item():g} master={os.environ['MASTER_ADDR']}",
    flush=True,
)
dist.destroy_process_group()
