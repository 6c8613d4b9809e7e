"""Every process adds its rank + 1 in an all_reduce and checks the sum."""
import os

import torch
import torch.distributed as dist


def main() -> None:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([rank + 1.0], device=device)
    dist.all_reduce(total)
    expected = world_size * (world_size + 1) // 2
    assert total.item() == expected, f"rank {rank}: sum {total.item()}, expected {expected}"
    print(f"rank {rank} of {world_size} on node {os.environ['GROUP_RANK']}: sum {int(total.item())}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
