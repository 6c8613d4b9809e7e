"""The pods' Python environment: what a user's image would hold, without metaflow-torchrun.

A real virtual environment (``python -m venv``) with torch, the Metaflow that runs
the tests, boto3 and requests, installed by pip from the package registry (pip's
cache and any local wheel make repeated builds fast), at the versions the test
environment has. metaflow-torchrun is not installed: a pod can only get the
extension and the ``rendezvous`` package from Metaflow's code package, as on a
real cluster.

The environment is built once and kept under the test environment's own
directory (``<venv>/rehearsal-pod-env-<key>``), the key naming the versions, so
that a change of version builds a new one. Concurrent callers build it once: a
file lock serializes them, and a half-built environment is never used: a file in
it marks it complete once pip has finished (a build that was cut short is removed
and made again).
"""

import fcntl
import hashlib
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TORCH_REQUIREMENT = "torch==2.13.0"  # never unpinned: the newest torch pulls gigabytes of CUDA
# Installed at the versions the tests run with, so that pods and the flow agree.
_SAME_AS_TESTS = ("metaflow", "boto3", "requests", "numpy")  # numpy: torch warns without it
BUILD_TIMEOUT_SECONDS = 1200
_COMPLETE = "rehearsal-complete"


def requirements() -> list:
    """What pip installs into the pod environment."""
    return [TORCH_REQUIREMENT] + [f"{name}=={metadata.version(name)}" for name in _SAME_AS_TESTS]


def _location() -> Path:
    key_source = " ".join([sys.version.split()[0], *requirements()])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    return Path(sys.prefix) / f"rehearsal-pod-env-{key}"


def pod_python_env() -> Path:
    """The environment's directory (its ``bin/python`` is the pods' Python); built if missing.

    Raises RuntimeError, with pip's output, when the build fails.
    """
    location = _location()
    complete = location / _COMPLETE
    if complete.exists():
        return location
    with open(f"{location}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete.exists():  # another process built it while we waited
            return location
        shutil.rmtree(location, ignore_errors=True)
        # venv from a virtualenv's Python makes an environment of the base interpreter:
        # nothing of the test environment's site-packages is visible in it.
        subprocess.run([sys.executable, "-m", "venv", str(location)], check=True,
                       capture_output=True, timeout=BUILD_TIMEOUT_SECONDS)
        installed = subprocess.run(
            [str(location / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", *requirements()],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS,
        )
        if installed.returncode != 0:
            shutil.rmtree(location, ignore_errors=True)
            raise RuntimeError(f"building the pod environment failed:\n{installed.stderr[-4000:]}")
        complete.write_text(" ".join(requirements()) + "\n")
    return location
