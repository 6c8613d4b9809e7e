"""Rank 0 sends a tensor to every other rank point to point; each rank checks it and reports back.

A rank that receives the wrong values raises, which fails the job on every node.
"""
import argparse
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


def payload(size: int, device: torch.device) -> torch.Tensor:
    """What rank 0 sends; the receivers compute it too, to check what arrived."""
    return torch.arange(size, dtype=torch.float32, device=device) ** 2 + 0.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=6)
    size = parser.parse_args().size

    device = init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    expected = payload(size, device)
    if rank == 0:
        for peer in range(1, world_size):
            dist.send(expected, dst=peer)
        print(f"rank 0 sent {expected.tolist()} to {world_size - 1} other ranks", flush=True)
    else:
        received = torch.empty(size, dtype=torch.float32, device=device)
        dist.recv(received, src=0)
        if not torch.equal(received, expected):
            raise ValueError(f"rank {rank} received {received.tolist()}, expected {expected.tolist()}")
        print(f"rank {rank} received {received.tolist()} from rank 0: as expected", flush=True)

    # Rank 0 learns how many ranks checked their copy (a rank that raised never gets here).
    checked = torch.ones(1, device=device)
    dist.reduce(checked, dst=0)
    if rank == 0:
        print(f"{int(checked.item())} of {world_size} ranks hold the tensor", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
