"""A Lightning Trainer DDP script, written as for ``torchrun``.

The Trainer finds the ranks and the world in torchrun's environment
(TorchElasticEnvironment), joins the process group in ``fit`` and shards the
training data with a DistributedSampler it adds itself; it never destroys the group
on CPU. Progress bar, logger, checkpoints and model summary are off only to keep the
test quick and its log short.
"""
import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from synthetic_data import FEATURES, regression_dataset, report


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(FEATURES, 1)
        self.samples_seen = 0

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.samples_seen += len(inputs)
        return F.mse_loss(self.layer(inputs), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, required=True, help="processes per node")
    parser.add_argument("--num-nodes", type=int, required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=args.devices,
        num_nodes=args.num_nodes,
        max_epochs=args.epochs,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=False,
    )
    model = Regression()
    trainer.fit(model, DataLoader(regression_dataset(args.samples), batch_size=args.batch_size))
    total = trainer.strategy.reduce(torch.tensor(model.samples_seen), reduce_op="sum")
    report("trainer", trainer.global_rank, trainer.local_rank, trainer.world_size, int(total), model)


if __name__ == "__main__":
    main()
