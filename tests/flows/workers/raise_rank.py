"""Worker: global rank --fail-rank raises from a nested call; every other rank idles."""
import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int, default=0)
parser.add_argument("--idle-seconds", type=float, default=600)
args = parser.parse_args()


def check_batch(rank: int) -> None:
    raise ValueError(f"bad batch on rank {rank}")


rank = int(os.environ["RANK"])
print(f"started rank={rank}", flush=True)
if rank == args.fail_rank:
    check_batch(rank)
time.sleep(args.idle_seconds)
