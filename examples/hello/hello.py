"""An ordinary torchrun script: nothing in it knows about Metaflow."""
import os

import torch
import torch.distributed as dist


def init_distributed() -> torch.device:
    """Join the job's process group: NCCL on a GPU per local rank, else gloo on the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def main() -> None:
    device = init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # Everyone adds a one: the sum shows that every process is connected to every other.
    answered = torch.ones(1, device=device)
    dist.all_reduce(answered)
    print(
        f"hello from rank {rank} of {world_size} "
        f"(node {os.environ['GROUP_RANK']}, local rank {os.environ['LOCAL_RANK']}, {device.type}): "
        f"{int(answered.item())} processes answered",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
