"""The pods' Python environment: what a user's image would hold, without metaflow-torchrun.

A real virtual environment (``python -m venv``) with torch, the Metaflow that runs
the tests, boto3 and requests, installed by pip from the package registry (pip's
cache and any local wheel make repeated builds fast), at the versions the test
environment has. metaflow-torchrun is not installed: a pod can only get the
extension and the ``rendezvous`` package from Metaflow's code package, as on a
real cluster.

The environment is built once and kept under the test environment's own
directory (``<venv>/rehearsal-pod-env-<key>``), the key naming the versions, so
that a change of version builds a new one; ``tests.harness.venvs.venv_in_use`` builds
it (once across concurrent callers, never using a half-built one).
"""

import hashlib
import sys
from importlib import metadata
from pathlib import Path

from tests.harness.venvs import TORCH_REQUIREMENT, venv_in_use

# Installed at the versions the tests run with, so that pods and the flow agree.
_SAME_AS_TESTS = ("metaflow", "boto3", "requests", "numpy")  # numpy: torch warns without it


def requirements() -> list:
    """What pip installs into the pod environment."""
    return [TORCH_REQUIREMENT] + [f"{name}=={metadata.version(name)}" for name in _SAME_AS_TESTS]


def _location() -> Path:
    key_source = " ".join([sys.version.split()[0], *requirements()])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    return Path(sys.prefix) / f"rehearsal-pod-env-{key}"


def pod_python_env() -> Path:
    """The environment's directory (its ``bin/python`` is the pods' Python); built if missing.

    Raises ``tests.harness.venvs.VenvBuildError``, with pip's output, when the build fails.
    """
    with venv_in_use(_location(), requirements(), "the pod environment") as location:
        return location
