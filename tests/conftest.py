"""Shared fixtures: run real Metaflow flows in isolation (see flow_runs.py)."""

import pytest

from flow_runs import FlowRunner


@pytest.fixture
def flows(tmp_path):
    """A FlowRunner; whatever its flows leave running is killed afterwards."""
    runner = FlowRunner(tmp_path)
    yield runner
    runner.kill_all()
