"""Worker: prints --steps training-like lines; global rank --fail-rank then raises; every other
rank waits until --release-file exists (at most --max-seconds)."""
import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--steps", type=int, default=0)
parser.add_argument("--release-file", default="")
parser.add_argument("--max-seconds", type=float, default=120)
args = parser.parse_args()

rank = int(os.environ["RANK"])
print(f"started rank={rank}", flush=True)
for step in range(1, args.steps + 1):
    time.sleep(0.3)
    print(f"step {step} loss {2.0 / (step + rank):.4f}", flush=True)
if rank == args.fail_rank:
    raise ValueError(f"bad batch on rank {rank}")
deadline = time.monotonic() + args.max_seconds
while args.release_file and not os.path.exists(args.release_file) and time.monotonic() < deadline:
    time.sleep(0.1)
print(f"released rank={rank}", flush=True)
