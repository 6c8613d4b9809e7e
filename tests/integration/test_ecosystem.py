"""Scripts written for the ecosystem's launch-aware libraries run unchanged through @torchrun.

Lightning Fabric, the Lightning Trainer and Hugging Face Accelerate find their ranks
and world in torchrun's environment; the DDP tutorial's multinode script reads it
through ``init_process_group``. tests/flows/ecosystem.py runs each of them on 2 nodes
x 2 processes in one @torchrun step (one flow start-up for all four); the scripts
are in tests/flows/ecosystem_scripts/. None but the tutorial destroys its process
group, and every one must still end cleanly.
"""

import re
from pathlib import Path

import pytest
import torch

# Hang protection only: a flow that hangs fails here instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)

NAMES = ("fabric", "trainer", "accelerate", "ddp-tutorial")
# "[rank2]: fabric rank=2 local=0 world=4 samples=64 params=0.902129", see synthetic_data.py
_REPORT = re.compile(
    r"^\[rank(?P<prefix>\d+)\]: (?P<name>\S+) rank=(?P<rank>\d+) local=(?P<local>\d+) "
    r"world=(?P<world>\d+) samples=(?P<samples>\d+) params=(?P<params>\S+)$"
)
_SNAPSHOT = re.compile(r"^\[rank0\]: Epoch 0: snapshot saved to (?P<path>.+)$")


def test_lightning_accelerate_and_the_ddp_tutorial_run_unchanged(flows, tmp_path):
    run = flows.run("ecosystem.py")
    assert run.returncode == 0, run.output[-6000:]
    lines = run.task_lines("train")
    reports = {}
    for line in lines:
        match = _REPORT.match(line)
        if match:
            reports.setdefault(match["name"], []).append(match.groupdict())
    assert sorted(reports) == sorted(NAMES), "\n".join(lines)
    for name, found in reports.items():
        # Each library saw torchrun's global rank (the line's prefix), the local rank
        # on its node (2 per node, node = Metaflow node index) and a world of 4; its
        # collective summed the 16 samples each rank trained on, so it sharded the
        # 64 samples over all 4 ranks; DDP kept the 4 replicas' parameters equal.
        assert sorted(int(report["prefix"]) for report in found) == [0, 1, 2, 3], (name, found)
        for report in found:
            rank = int(report["prefix"])
            assert (int(report["rank"]), int(report["local"])) == (rank, rank % 2), (name, report)
            assert (report["world"], report["samples"]) == ("4", "64"), (name, report)
        assert len({report["params"] for report in found}) == 1, (name, found)
    results = {line for line in lines if line.startswith("RESULT ")}
    for script in ("fabric_ddp.py", "lightning_trainer.py", "accelerate_script.py", "ddp_tutorial_multinode.py"):
        for node in (0, 1):
            assert any(line.startswith(f"RESULT script={script} node={node} ") for line in results), results

    # The tutorial's rank 0 saved its snapshot after epoch 0, with the parameters it reported.
    saved = [Path(match["path"]) for match in map(_SNAPSHOT.match, lines) if match]
    assert len(saved) == 1 and tmp_path in saved[0].parents, "\n".join(lines)
    snapshot = torch.load(saved[0], map_location="cpu")
    assert snapshot["EPOCHS_RUN"] == 0
    reported = float(reports["ddp-tutorial"][0]["params"])
    assert sum(float(value.sum()) for value in snapshot["MODEL_STATE"].values()) == pytest.approx(reported, abs=1e-5)
    assert flows.live_processes() == []
