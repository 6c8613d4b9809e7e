"""Starts the hang probe in a torchrun worker, then the ``sitecustomize`` this one shadows.

The ``metaflow`` backend puts this file's directory first on the workers'
``PYTHONPATH``; Python imports ``sitecustomize`` as it starts, before the
user's script. The probe (``../probe.py``) is loaded by path under a private
name, so a user's module named like one of ours changes nothing; then the
next ``sitecustomize`` on the path, if any (a virtual environment's, a
distribution's), runs as it would have.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _load(name: str, spec) -> None:
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _start_probe() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(os.path.dirname(here), "probe.py")
    name = "_metaflow_rendezvous_hang_probe"
    _load(name, importlib.util.spec_from_file_location(name, path))
    sys.modules[name].start()


def _run_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None:
        _load("sitecustomize", spec)


try:
    _start_probe()
except Exception as error:  # the user's script runs either way
    print(f"metaflow rendezvous: hang diagnosis is off in this worker: {error!r}",
          file=sys.stderr, flush=True)
_run_shadowed()
