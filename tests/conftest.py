"""Shared fixtures: run real Metaflow flows in isolation (see harness/flow_runs.py), and the
rehearsal's pod environment (see rehearsal/pod_env.py); the ``remote`` marker."""

import pytest

# Metaflow first: its import loads the extension's top-level names, which import
# our errors module; importing that module first would make a cycle through it.
import metaflow  # noqa: F401
from tests.harness.flow_runs import FlowRunner


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "remote: rehearsals of Metaflow's remote path (Kubernetes, Argo, AWS Batch)"
    )


@pytest.fixture
def flows(tmp_path):
    """A FlowRunner; whatever its flows leave running is killed afterwards."""
    runner = FlowRunner(tmp_path)
    yield runner
    runner.kill_all()


@pytest.fixture(scope="session")
def pod_python_env():
    """The pods' Python environment (built on first use, then kept under the venv)."""
    from tests.rehearsal.pod_env import pod_python_env as build

    return build()
