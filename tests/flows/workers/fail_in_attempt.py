"""Worker: rank 1 raises when --attempt equals --fail-attempt; then a gloo all_reduce."""
import argparse
import os

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--attempt", type=int, required=True)
parser.add_argument("--fail-attempt", type=int, default=0)
args = parser.parse_args()

if os.environ["RANK"] == "1" and args.attempt == args.fail_attempt:
    raise RuntimeError(f"planned failure in attempt {args.attempt}")
dist.init_process_group("gloo")
value = torch.tensor([1.0])
dist.all_reduce(value)
print(f"rank={dist.get_rank()} attempt={args.attempt} sum={value.item():g} run_id={os.environ['TORCHELASTIC_RUN_ID']}", flush=True)
dist.destroy_process_group()
