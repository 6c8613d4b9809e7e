"""Worker: in the job's restart round i (TORCHELASTIC_RESTART_COUNT), global rank
--fail-ranks[i] raises before it joins the process group, so the other ranks do not fail
with it: their agents restart them without counting a failure of their own. The ranks of
a round without a failure print their restart count after a gloo all_reduce."""
import argparse
import os

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--fail-ranks", default="", help="comma-separated: the rank that fails in each round")
args = parser.parse_args()

restart_count = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
fail_ranks = [int(rank) for rank in args.fail_ranks.split(",") if rank]
rank = int(os.environ["RANK"])
if restart_count < len(fail_ranks) and rank == fail_ranks[restart_count]:
    raise RuntimeError(f"rank {rank} fails in round {restart_count}")
dist.init_process_group("gloo")
value = torch.tensor([1.0])
dist.all_reduce(value)
print(f"rank={rank} restart_count={restart_count} sum={value.item():g}", flush=True)
dist.destroy_process_group()
