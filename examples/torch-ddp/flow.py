"""Multi-node DDP training whose snapshot and final loss are kept as artifacts: a rerun
continues from the snapshot.

    python flow.py run                      # epochs 0-2, from scratch
    python flow.py run                      # epochs 3-5, from the first run's snapshot
    python flow.py run --from_scratch true  # epochs 0-2 again
"""
import os
import tempfile

from metaflow import Flow, FlowSpec, Parameter, current, step, torchrun


class TorchDDPFlow(FlowSpec):
    num_parallel = Parameter("num_parallel", default=2, help="number of nodes")
    epochs = Parameter("epochs", default=3, help="epochs to train in this run")
    from_scratch = Parameter(
        "from_scratch", default=False, help="ignore the snapshot of the latest successful run"
    )
    max_restarts = Parameter(
        "max_restarts", default=0, help="restarts from the last snapshot after a worker failed"
    )

    @step
    def start(self):
        previous = None if self.from_scratch else Flow(current.flow_name).latest_successful_run
        self.snapshot = previous.data.snapshot if previous else None
        self.epochs_done = previous.data.epochs_done if previous else 0
        if previous:
            print(f"continuing {previous.pathspec}, {self.epochs_done} epochs done")
        self.next(self.train, num_parallel=self.num_parallel)

    @torchrun
    @step
    def train(self):
        # train.py's train() is one rank's job. Imported here, so that the other
        # steps need no torch; the workers import it from this directory.
        from train import train

        # Rank 0 reads and writes the snapshot; it runs on node 0 (the control task).
        snapshot_path = os.path.join(tempfile.mkdtemp(), "snapshot.pt")
        is_node_0 = current.parallel.node_index == 0
        if is_node_0 and self.snapshot:
            with open(snapshot_path, "wb") as file:
                file.write(self.snapshot)
        result = current.torch.run(
            entrypoint=train,
            entrypoint_args={
                "total_epochs": self.epochs_done + self.epochs,
                "snapshot_path": snapshot_path,
            },
            torchrun_args={"max_restarts": self.max_restarts},
        )
        # What rank 0 returned, on node 0 (None on the other nodes).
        self.final_loss = result.value
        if is_node_0:
            with open(snapshot_path, "rb") as file:
                self.snapshot = file.read()
            self.epochs_done += self.epochs
        self.node_index = current.parallel.node_index
        self.next(self.join)

    @step
    def join(self, inputs):
        node_0 = next(task for task in inputs if task.node_index == 0)
        self.snapshot, self.epochs_done = node_0.snapshot, node_0.epochs_done
        self.final_loss = node_0.final_loss
        self.next(self.end)

    @step
    def end(self):
        print(f"snapshot after {self.epochs_done} epochs: {len(self.snapshot)} bytes")
        print(f"final loss {self.final_loss:.4f}")


if __name__ == "__main__":
    TorchDDPFlow()
