"""Multi-node DDP training in the shape of the PyTorch DDP tutorial series' multinode script.

It mirrors ``distributed/ddp-tutorial-series/multinode.py`` of pytorch/examples (the
script of the tutorial "Multinode Training"): ``init_process_group`` reading the
rendezvous from torchrun's environment, LOCAL_RANK and RANK read from the
environment, a ``Trainer`` class around a DDP model, a DistributedSampler, global
rank 0 saving a snapshot every ``save_every`` epochs and every rank resuming from
one at start, the same positional arguments, and ``destroy_process_group`` at the
end of ``main`` as there. What differs:

- gloo on the CPU instead of NCCL with a GPU per local rank: the model stays on the
  CPU and DDP gets no ``device_ids``;
- the data set is built here (the published script imports ``MyTrainDataset`` from
  ``datautils.py``), the loss is a mean squared error, and ``--snapshot_path`` sets
  where the snapshot goes (the published script writes ``snapshot.pt`` in the
  working directory);
- at the end every rank prints one line with the number of samples trained on by
  all ranks (an ``all_reduce``) for tests/integration/test_ecosystem.py.
"""
import argparse
import os

import torch
import torch.nn.functional as F
from torch.distributed import all_reduce, destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from synthetic_data import FEATURES, regression_dataset, report


def ddp_setup() -> None:
    # MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE come from torchrun
    init_process_group(backend="gloo")


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        train_data: DataLoader,
        optimizer: torch.optim.Optimizer,
        save_every: int,
        snapshot_path: str,
    ) -> None:
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.global_rank = int(os.environ["RANK"])
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.snapshot_path = snapshot_path
        self.epochs_run = 0
        self.samples_seen = 0
        if os.path.exists(snapshot_path):
            self._load_snapshot()
        self.model = DDP(self.model)

    def _load_snapshot(self) -> None:
        snapshot = torch.load(self.snapshot_path, map_location="cpu")
        self.model.load_state_dict(snapshot["MODEL_STATE"])
        self.epochs_run = snapshot["EPOCHS_RUN"]
        print(f"Resuming from the snapshot of epoch {self.epochs_run}")

    def _run_batch(self, source: torch.Tensor, targets: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss = F.mse_loss(self.model(source), targets)
        loss.backward()
        self.optimizer.step()
        self.samples_seen += len(source)

    def _run_epoch(self, epoch: int) -> None:
        batch_size = self.train_data.batch_size
        print(f"[rank {self.global_rank}] epoch {epoch}, batch size {batch_size}, {len(self.train_data)} steps")
        self.train_data.sampler.set_epoch(epoch)
        for source, targets in self.train_data:
            self._run_batch(source, targets)

    def _save_snapshot(self, epoch: int) -> None:
        snapshot = {"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}
        torch.save(snapshot, self.snapshot_path)
        print(f"Epoch {epoch}: snapshot saved to {self.snapshot_path}")

    def train(self, max_epochs: int) -> None:
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            if self.global_rank == 0 and epoch % self.save_every == 0:
                self._save_snapshot(epoch)


def load_train_objs():
    train_set = regression_dataset(64)
    model = torch.nn.Linear(FEATURES, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train_set, model, optimizer


def prepare_dataloader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=DistributedSampler(dataset))


def main(save_every: int, total_epochs: int, batch_size: int, snapshot_path: str) -> None:
    ddp_setup()
    dataset, model, optimizer = load_train_objs()
    train_data = prepare_dataloader(dataset, batch_size)
    trainer = Trainer(model, train_data, optimizer, save_every, snapshot_path)
    trainer.train(total_epochs)
    samples = torch.tensor(trainer.samples_seen)
    all_reduce(samples)
    report(
        "ddp-tutorial", trainer.global_rank, trainer.local_rank, int(os.environ["WORLD_SIZE"]),
        int(samples), trainer.model,
    )
    destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="multi-node DDP training with snapshots")
    parser.add_argument("total_epochs", type=int, help="epochs to train for in all")
    parser.add_argument("save_every", type=int, help="epochs between snapshots")
    parser.add_argument("--batch_size", default=8, type=int, help="batch size per process")
    parser.add_argument("--snapshot_path", default="snapshot.pt", help="where rank 0 saves the snapshot")
    args = parser.parse_args()
    main(args.save_every, args.total_epochs, args.batch_size, args.snapshot_path)
