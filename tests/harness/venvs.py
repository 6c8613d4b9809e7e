"""Virtual environments that tests build with pip: the builder, and a user's install of the package.

``venv_in_use`` builds an environment once across processes and keeps it
while it is in use; the rehearsal's pod environment (``rehearsal/pod_env.py``)
and ``users_install`` both build theirs with it.

``users_install`` is what a new user has after ``pip install
metaflow-torchrun``: a fresh virtual environment of the base interpreter with
``torch==2.13.0`` and a regular (not editable) install of this repository,
built into a wheel by pip, plus the extra packages asked for (the examples'
own needs) and nothing else. Run its ``bin/python`` by path, with PATH not
holding its ``bin``, as from a virtualenv that was never activated.

Environments are kept under the test environment's directory (``sys.prefix``),
named with a key of what they hold, so that a change builds a new one and
repeated sessions reuse it; pip's cache makes a rebuild a matter of seconds
(torch's wheel is already there from building the test environment). A file
lock serializes builders, and a half-built environment is never used: a file
in it marks it complete once pip has finished (a build that was cut short is
removed and made again).
"""

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator, List, Sequence

REPO = Path(__file__).resolve().parents[2]
TORCH_REQUIREMENT = "torch==2.13.0"  # never unpinned: the newest torch pulls gigabytes of CUDA
BUILD_TIMEOUT_SECONDS = 1200
_COMPLETE = "venv-complete"
_USERS_INSTALL_PREFIX = "users-install-"
# What pip builds the package's wheel from: setup.py reads the README for the
# long description, and the packages are every .py file below these folders.
_PACKAGE_FOLDERS = ("rendezvous", "metaflow_extensions")
_PACKAGE_FILES = ("setup.py", "README.md")


class VenvBuildError(RuntimeError):
    """pip could not build a test environment; the message holds the end of pip's output."""


@contextmanager
def venv_in_use(location: Path, pip_args: Sequence[str], what: str) -> Iterator[Path]:
    """``location`` as a virtual environment holding ``pip install pip_args``, while the block runs.

    Built if missing or half-built (once, whoever calls first; the others wait
    for it, under the lock ``<location>.build``). While the block runs, a shared
    lock on ``<location>.lock`` marks the environment as in use, so that
    ``remove_unused`` leaves it alone; users never wait for each other, which
    matters when several test processes hold it for a whole session at once.

    Raises VenvBuildError, naming ``what``, when pip fails.
    """
    with open(f"{location}.build", "w") as build_lock, open(f"{location}.lock", "w") as lock:
        fcntl.flock(build_lock, fcntl.LOCK_EX)
        try:
            if not (location / _COMPLETE).exists():
                _build(location, pip_args, what)
            fcntl.flock(lock, fcntl.LOCK_SH)  # others may use it too, nobody removes it
        finally:
            fcntl.flock(build_lock, fcntl.LOCK_UN)
        yield location


def remove_unused(prefix: str, keep: Path) -> None:
    """Remove the environments named ``<prefix>*`` next to ``keep``, but ``keep``, that nobody uses."""
    for lock_path in keep.parent.glob(f"{prefix}*.lock"):
        location = lock_path.with_suffix("")
        if location == keep:
            continue
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by another session
            shutil.rmtree(location, ignore_errors=True)
            lock_path.unlink()
            Path(f"{location}.build").unlink(missing_ok=True)


def _build(location: Path, pip_args: Sequence[str], what: str) -> None:
    shutil.rmtree(location, ignore_errors=True)
    # venv from a virtualenv's Python makes an environment of the base interpreter:
    # nothing of the test environment's site-packages is visible in it.
    subprocess.run([sys.executable, "-m", "venv", str(location)], check=True,
                   capture_output=True, timeout=BUILD_TIMEOUT_SECONDS)
    installed = subprocess.run(
        [str(location / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", *pip_args],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS,
    )
    if installed.returncode != 0:
        shutil.rmtree(location, ignore_errors=True)
        raise VenvBuildError(f"building {what} failed:\n{installed.stderr[-4000:]}")
    (location / _COMPLETE).write_text(" ".join(pip_args) + "\n")


def package_files() -> List[Path]:
    """The repository's files that pip builds the package from, relative to the repository."""
    files = [Path(name) for name in _PACKAGE_FILES]
    for folder in _PACKAGE_FOLDERS:
        files += sorted(path.relative_to(REPO) for path in (REPO / folder).rglob("*.py")
                        if "__pycache__" not in path.parts)
    return files


@contextmanager
def users_install(extra_requirements: Sequence[str]) -> Iterator[Path]:
    """The python of a user's install of this repository plus ``extra_requirements``; see the module.

    pip installs from a copy of the package's files (``package_files``), not
    from the working tree, whose ``build/`` folder setuptools would reuse,
    stale files included. Metaflow is held to the version the tests run with
    (a constraint, which installs nothing by itself), so that the examples meet
    the Metaflow the rest of the suite knows. The environment's name keys the
    Python version, the requirements and the contents of the package's files
    but the README's (only the long description comes from it); environments
    of older keys are removed when nobody uses them.
    """
    requirements = [TORCH_REQUIREMENT, *sorted(set(extra_requirements))]
    constraint = f"metaflow=={metadata.version('metaflow')}"
    digest = hashlib.sha256(" ".join([sys.version.split()[0], *requirements, constraint]).encode())
    for path in package_files():
        if path.name != "README.md":
            digest.update(str(path).encode() + b"\0" + (REPO / path).read_bytes() + b"\0")
    location = Path(sys.prefix) / f"{_USERS_INSTALL_PREFIX}{digest.hexdigest()[:12]}"
    with tempfile.TemporaryDirectory(prefix="users-install-source-") as scratch:
        source = Path(scratch) / "metaflow-torchrun"
        for path in package_files():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / path, source / path)
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text(constraint + "\n")
        building = venv_in_use(location, [*requirements, str(source), "--constraint", str(constraints)],
                               "a user's install of metaflow-torchrun")
        with building as venv:
            remove_unused(_USERS_INSTALL_PREFIX, venv)
            yield venv / "bin" / "python"
