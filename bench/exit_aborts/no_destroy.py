"""Worker: what many scripts do, init_process_group and one all_reduce, and no destroy_process_group."""
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(f"rank={dist.get_rank()} sum={value.item():g}", flush=True)
