"""What remote nodes receive: Metaflow's code package, and the package as pip installs it."""

import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from tests.harness.flow_runs import REPO

pytestmark = pytest.mark.timeout(300)

BACKEND_FILES = sorted(path.relative_to(REPO / "rendezvous").as_posix()
                       for path in (REPO / "rendezvous").rglob("*.py"))
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
    for name in BACKEND_FILES:  # the workers' sitecustomize of hang diagnosis among them
        assert (target / "rendezvous" / name).is_file(), name
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


def test_installing_over_the_original_package_replaces_it(tmp_path):
    """The registry's metaflow-torchrun 0.2.2 first, then this package, in one venv: pip
    upgrades (our version sorts above), Metaflow loads ours, no file of the original is left."""
    wheels = tmp_path / "wheels"
    for what in (["download", "metaflow-torchrun==0.2.2"],
                 ["wheel", "--no-build-isolation", str(REPO)]):
        made = subprocess.run([sys.executable, "-m", "pip", *what, "--quiet", "--no-deps",
                               "-d" if what[0] == "download" else "-w", str(wheels)],
                              cwd=tmp_path, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr[-3000:]
    original = next(wheels.glob("metaflow_torchrun-0.2.2-*.whl"))
    ours = next(path for path in wheels.glob("metaflow_torchrun-*.whl") if path != original)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    site = next(venv.glob("lib/python*/site-packages"))
    subprocess.run([*pip, str(original)], check=True, capture_output=True)
    original_files = {path.relative_to(site) for path in (site / "metaflow_extensions").rglob("*.py")}
    upgrade = subprocess.run([*pip, str(ours)], capture_output=True, text=True)
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    ours_files = {path.relative_to(site) for path in (site / "metaflow_extensions").rglob("*.py")}
    assert ours_files == {Path("metaflow_extensions/torchrun") / name for name in EXTENSION_FILES}
    assert original_files - ours_files  # the original had files of its own, and they are gone
    # Metaflow and torch come from this environment; the extension only from the new venv.
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sys\n"
         "from metaflow import TorchrunSingleNodeMultiGPU, torchrun\n"
         "print(sys.modules[torchrun.args[0].__module__].__file__)\n"
         "print(sys.modules[TorchrunSingleNodeMultiGPU.__module__].__file__)"],
        cwd=tmp_path,
        env={"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin",
             "METAFLOW_USER": "tester",
             "METAFLOW_HOME": str(tmp_path / "home"), "METAFLOW_EXTENSIONS_SEARCH_DIRS": str(site)},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    for loaded in probe.stdout.split():
        assert loaded.startswith(str(site / "metaflow_extensions" / "torchrun" / "plugins")), loaded
