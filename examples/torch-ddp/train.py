"""Multi-node DDP training of a small regression model on synthetic data, with snapshots.

``train`` is the whole job of one rank and returns the final epoch's loss; the flow
calls it on every rank (``current.torch.run(entrypoint=train, ...)``), and
``torchrun train.py --total-epochs 3 --snapshot-path s.pt`` runs it as a script.
Rank 0 saves a snapshot (model, optimizer, epochs done) every ``--save-every`` epochs.
At start, rank 0 loads the snapshot if there is one and sends it to every other rank,
so only node 0 needs the file: the nodes share no file system. A job restarted by
torchrun (``--max-restarts``) or started again on the same snapshot continues from
the epoch the snapshot was taken at.
"""
import argparse
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

FEATURES = 20


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


def synthetic_dataset(samples: int) -> TensorDataset:
    """Noisy linear targets; the fixed seed gives every rank the same data."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    weights = torch.randn(FEATURES, 1, generator=generator)
    targets = inputs @ weights + 0.1 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(inputs, targets)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        data: DataLoader,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        snapshot_path: Path,
        save_every: int,
    ):
        self.rank = dist.get_rank()
        self.device = device
        self.data = data
        self.optimizer = optimizer
        self.snapshot_path = snapshot_path
        self.save_every = save_every
        model.to(device)
        self.epochs_run = self._load_snapshot(model)
        # DDP also copies rank 0's parameters to every rank.
        self.model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def _load_snapshot(self, model: nn.Module) -> int:
        """Load rank 0's snapshot on every rank; return the epochs it holds (0 without one)."""
        snapshot: list[Optional[dict]] = [None]
        if self.rank == 0 and self.snapshot_path.exists():
            snapshot[0] = torch.load(self.snapshot_path, map_location="cpu")
        dist.broadcast_object_list(snapshot, src=0, device=self.device)
        if snapshot[0] is None:
            return 0
        model.load_state_dict(snapshot[0]["model"])
        self.optimizer.load_state_dict(snapshot[0]["optimizer"])
        if self.rank == 0:
            print(f"resuming from the snapshot taken after {snapshot[0]['epochs_run']} epochs", flush=True)
        return snapshot[0]["epochs_run"]

    def _save_snapshot(self, epochs_run: int) -> None:
        snapshot = {
            "model": self.model.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epochs_run": epochs_run,
        }
        # Write then rename: a job killed while saving keeps the previous snapshot.
        partial = self.snapshot_path.with_suffix(".partial")
        torch.save(snapshot, partial)
        partial.replace(self.snapshot_path)

    def _run_epoch(self, epoch: int) -> float:
        """Train one epoch; return its mean loss over every rank's batches."""
        self.data.sampler.set_epoch(epoch)
        loss_sum = torch.zeros(2, device=self.device)  # sum of losses, number of batches
        for inputs, targets in self.data:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            self.optimizer.zero_grad()
            loss = F.mse_loss(self.model(inputs), targets)
            loss.backward()
            self.optimizer.step()
            loss_sum += torch.stack([loss.detach(), torch.ones((), device=self.device)])
        dist.all_reduce(loss_sum)
        loss = (loss_sum[0] / loss_sum[1]).item()
        if self.rank == 0:
            print(f"epoch {epoch} loss {loss:.4f}", flush=True)
        return loss

    def train(self, total_epochs: int) -> Optional[float]:
        """Train up to ``total_epochs``; return the last epoch's loss (None if none was left)."""
        loss = None
        for epoch in range(self.epochs_run, total_epochs):
            loss = self._run_epoch(epoch)
            if self.rank == 0 and ((epoch + 1) % self.save_every == 0 or epoch + 1 == total_epochs):
                self._save_snapshot(epoch + 1)
        return loss


def train(
    total_epochs: int,
    snapshot_path: str,
    save_every: int = 1,
    batch_size: int = 32,
    samples: int = 2048,
) -> Optional[float]:
    """One rank's job: train until ``total_epochs`` are done; return the last epoch's loss.

    ``batch_size`` is per process. Rank 0 loads and saves the snapshot at ``snapshot_path``.
    """
    device = init_distributed()
    dataset = synthetic_dataset(samples)
    data = DataLoader(dataset, batch_size=batch_size, sampler=DistributedSampler(dataset))
    torch.manual_seed(0)  # the same initial weights in every run
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = Trainer(model, data, optimizer, device, Path(snapshot_path), save_every)
    final_loss = trainer.train(total_epochs)
    # Wait for rank 0's last snapshot, and drop the DDP wrapper before its
    # process group: tearing a group down under a live DDP reducer, or while a
    # peer still works, can abort the process at exit.
    dist.barrier()
    del trainer
    dist.destroy_process_group()
    return final_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-epochs", type=int, required=True, help="train until this many epochs are done")
    parser.add_argument("--snapshot-path", required=True)
    parser.add_argument("--save-every", type=int, default=1, help="epochs between snapshots")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args()
    train(args.total_epochs, args.snapshot_path, args.save_every, args.batch_size, args.samples)


if __name__ == "__main__":
    main()
