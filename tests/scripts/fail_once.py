"""Worker: global rank FAIL_RANK raises in the first attempt only; then a gloo all_reduce.

The marker file makes "first attempt" independent of TORCHELASTIC_RESTART_COUNT,
which counts per node.
"""
import os
import sys

import torch
import torch.distributed as dist

marker = os.path.join(sys.argv[1], "failed-once")
dist.init_process_group("gloo")
if dist.get_rank() == int(os.environ.get("FAIL_RANK", "0")) and not os.path.exists(marker):
    open(marker, "w").close()
    raise RuntimeError("planned failure in the first attempt")
value = torch.tensor([1.0])
dist.all_reduce(value)
# One write per line (see allreduce.py).
sys.stdout.write(f"rank={dist.get_rank()} sum={value.item():g} restart={os.environ['TORCHELASTIC_RESTART_COUNT']}\n")
dist.destroy_process_group()
