"""Installs the rehearsal's stand-ins in every Python process of a rehearsal flow run.

The test puts this directory on the flow process's PYTHONPATH, so Python imports
this module at start-up in the flow process and in all of Metaflow's subprocesses
(``kubernetes step``, ``batch step``, ...); the repository root, also on that
PYTHONPATH, holds the ``tests.rehearsal`` package. It does nothing unless the
cluster description variable is set; pods never get either.
"""

import importlib
import os

if os.environ.get("METAFLOW_TORCHRUN_REHEARSAL_CLUSTER"):
    from tests.rehearsal import cluster

    for _name in cluster.description()["standins"]:
        importlib.import_module(f"tests.rehearsal.{_name}_standin").install()
