"""Steps of work that sum numbers across ranks; the last rank fails once, at --fail-at-step.

Rank 0 checkpoints the running total after every step and, when the workers start
again after a failure, sends the checkpoint to every rank, so the work continues
where it stopped instead of from the start. torchrun sets
TORCHELASTIC_RESTART_COUNT to the number of restarts so far on this node (a node
that only followed another node's restart counts none).
"""
import argparse
import os
from pathlib import Path

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
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fail-at-step", type=int, default=5, help="-1: never")
    parser.add_argument("--checkpoint", type=Path, required=True, help="rank 0's checkpoint file")
    args = parser.parse_args()

    device = init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # [next step, running total]; rank 0's checkpoint, if any, decides for everyone.
    state = torch.zeros(2, dtype=torch.float64, device=device)
    if rank == 0 and args.checkpoint.exists():
        state.copy_(torch.load(args.checkpoint))
    dist.broadcast(state, src=0)
    first_step = int(state[0].item())
    if rank == 0:
        print(f"starting at step {first_step} of {args.steps}", flush=True)

    # The node's restart count: 0 until its workers failed once.
    fails = rank == world_size - 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
    partial = args.checkpoint.with_suffix(".partial")
    for step in range(first_step, args.steps):
        if fails and step == args.fail_at_step:
            raise RuntimeError(f"rank {rank} fails at step {step} (planned, first run only)")
        contribution = torch.tensor([rank + 1.0], dtype=torch.float64, device=device)
        dist.all_reduce(contribution)
        state[0] += 1
        state[1] += contribution[0]
        if rank == 0:
            # Write then rename: a worker stopped while saving keeps the previous checkpoint.
            torch.save(state.cpu(), partial)
            partial.replace(args.checkpoint)

    expected = args.steps * world_size * (world_size + 1) / 2
    if rank == 0:
        print(f"total {state[1].item():g} after {args.steps} steps (expected {expected:g})", flush=True)
    if state[1].item() != expected:
        raise ValueError(f"rank {rank}: total {state[1].item():g}, expected {expected:g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
