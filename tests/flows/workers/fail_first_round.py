"""Worker: rank 1 raises in its node's first round (TORCHELASTIC_RESTART_COUNT 0); then a gloo all_reduce."""
import os

import torch
import torch.distributed as dist

if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    raise RuntimeError("planned failure in the first round")
dist.init_process_group("gloo")
value = torch.tensor([1.0])
dist.all_reduce(value)
print(f"rank={dist.get_rank()} sum={value.item():g} after the restart", flush=True)
dist.destroy_process_group()
