"""Train a small character-level GPT on a text with DDP, then print a sample from rank 0.

Every rank draws its own random batches; DDP averages the gradients, so each
step learns from world size x batch size sequences.
"""
import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from model import GPT, GPTConfig

# Model size and the training settings that go with it.
PRESETS = {
    "cpu": dict(block_size=32, n_layer=2, n_head=2, n_embd=48, batch_size=16, lr=3e-3),
    "gpu": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, batch_size=64, lr=3e-4),
}
EVAL_BATCHES = 8


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


def batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator):
    """Random windows of ``data`` and the same windows shifted by one character (the targets)."""
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    inputs = torch.stack([data[start:start + block_size] for start in starts])
    targets = torch.stack([data[start + 1:start + block_size + 1] for start in starts])
    return inputs, targets


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: torch.Tensor, block_size: int, batch_size: int,
             device: torch.device) -> float:
    """Mean loss over the same fixed batches on every rank, averaged over the ranks."""
    model.eval()
    generator = torch.Generator().manual_seed(1234 + dist.get_rank())
    losses = torch.zeros(1, device=device)
    for _ in range(EVAL_BATCHES):
        inputs, targets = (t.to(device) for t in batch(data, block_size, batch_size, generator))
        logits = model(inputs)
        losses += F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    dist.all_reduce(losses)
    model.train()
    return losses.item() / (EVAL_BATCHES * dist.get_world_size())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=Path(__file__).with_name("input.txt"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--sample-chars", type=int, default=200)
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    batch_size, lr = preset.pop("batch_size"), preset.pop("lr")

    device = init_distributed()
    rank = dist.get_rank()
    text = args.text.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = torch.tensor([chars.index(char) for char in text])
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    torch.manual_seed(0)  # the same initial weights everywhere (DDP copies rank 0's anyway)
    config = GPTConfig(vocab_size=len(chars), **preset)
    model = GPT(config).to(device)
    ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    if rank == 0:
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{parameters} parameters; text of {len(text)} characters, {len(chars)} distinct; "
              f"{dist.get_world_size()} processes", flush=True)

    generator = torch.Generator().manual_seed(rank)  # each rank its own batches
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            val_loss = evaluate(ddp_model, val_data, config.block_size, batch_size, device)
            if rank == 0:
                print(f"step {step} val loss {val_loss:.4f}", flush=True)
        if step == args.steps:
            break
        inputs, targets = (t.to(device) for t in batch(train_data, config.block_size, batch_size, generator))
        loss = F.cross_entropy(ddp_model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if rank == 0:
        model.eval()
        start = torch.tensor([[chars.index("\n")]], device=device)
        sample = model.generate(start, args.sample_chars)[0].tolist()
        print("sample:", flush=True)
        for line in "".join(chars[i] for i in sample).strip().splitlines():
            print(f"> {line}", flush=True)
    # Wait for rank 0's sample, and drop the DDP wrapper before its process
    # group: tearing a group down under a live DDP reducer, or while a peer
    # still works, can abort the process at exit.
    dist.barrier()
    del ddp_model
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
