"""Worker: one gloo all_reduce; prints what every rank saw (and ``--print-env NAME...``'s values)."""
import argparse
import os
import sys

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--print-env", nargs="*", default=[], metavar="NAME")
args = parser.parse_args()

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
shown = "".join(f" {name}={os.environ.get(name, '<unset>')}" for name in args.print_env)
# One write per line: torchrun runs workers unbuffered (python -u), where print()
# writes the text and the newline separately and lines of workers interleave.
sys.stdout.write(
    f"rank={dist.get_rank()} world={dist.get_world_size()} group_rank={os.environ['GROUP_RANK']} "
    f"sum={value.item():g} master={os.environ['MASTER_ADDR']} "
    f"restart={os.environ['TORCHELASTIC_RESTART_COUNT']}{shown}\n"
)
dist.destroy_process_group()
