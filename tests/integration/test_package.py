"""What remote nodes receive: Metaflow's code package, and the package as pip installs it."""

import subprocess
import sys
import tarfile

import pytest

from tests.harness.flow_runs import REPO

pytestmark = pytest.mark.timeout(300)

BACKEND_FILES = sorted(path.name for path in (REPO / "rendezvous").glob("*.py"))
EXTENSION_ROOT = REPO / "metaflow_extensions" / "torchrun"
EXTENSION_FILES = sorted(
    path.relative_to(EXTENSION_ROOT).as_posix() for path in EXTENSION_ROOT.rglob("*.py")
)


def test_code_package_carries_the_backend_and_runs_it(flows, tmp_path):
    package = tmp_path / "package.tgz"
    run = flows.run("two_nodes.py", "save", str(package), command="package")
    assert run.returncode == 0, run.output[-3000:]
    with tarfile.open(package) as archive:
        names = set(archive.getnames())
        archive.extractall(tmp_path / "node")
    code_dir = ".mf_code"  # on PYTHONPATH of a remote task (Metaflow's code directory)
    for name in BACKEND_FILES:
        assert f"{code_dir}/rendezvous/{name}" in names
    for name in EXTENSION_FILES:
        assert f"{code_dir}/metaflow_extensions/torchrun/{name}" in names
    assert "workers/ranks.py" in names and "two_nodes.py" in names  # the flow's own directory
    # On a remote node `python -m rendezvous` must come from the package itself.
    node = tmp_path / "node"
    check = subprocess.run(
        [sys.executable, "-c", "import rendezvous, rendezvous.handler; print(rendezvous.__file__)"],
        cwd=node,
        env={**flows.env, "PYTHONPATH": str(node / code_dir)},
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip() == str(node / code_dir / "rendezvous" / "__init__.py")
    help_text = subprocess.run(
        [sys.executable, "-m", "rendezvous", "--help"],
        cwd=node,
        env={**flows.env, "PYTHONPATH": str(node / code_dir)},
        capture_output=True,
        text=True,
    )
    assert help_text.returncode == 0 and "--rdzv-backend" in help_text.stdout


def test_installed_package_registers_the_decorator(tmp_path):
    # A regular (not editable) install, as `pip install metaflow-torchrun` makes it.
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    for name in EXTENSION_FILES:
        assert (target / "metaflow_extensions" / "torchrun" / name).is_file()
    assert not (target / "metaflow_extensions" / "__init__.py").exists()
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys\n"
         "from metaflow import torchrun\n"
         "print(sys.modules[torchrun.args[0].__module__].__file__)\n"
         "print('torch' in sys.modules)"],
        cwd=tmp_path,
        # The search restriction hides the development install of this repo (an
        # editable one in compat mode is visible to Metaflow too, and two copies
        # of one extension conflict); a user's environment has just the one.
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "METAFLOW_USER": "tester",
             "METAFLOW_HOME": str(tmp_path / "home"), "METAFLOW_EXTENSIONS_SEARCH_DIRS": str(target)},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    decorator_file, torch_imported = probe.stdout.split()
    assert decorator_file.startswith(str(target))
    assert torch_imported == "False"  # every `import metaflow` loads the extension: no torch
