"""Helpers the tests and the benchmarks share: real processes, found and cleaned up by a marker.

- ``processes``: the marker variable every process of a test job carries, and
  how to find and kill the processes that carry it;
- ``torchrun_nodes``: the nodes of a job as real torchrun agents (``Job``), on
  loopback or on test hosts;
- ``flow_runs``: real Metaflow flows of ``tests/flows`` in isolation (``FlowRunner``);
- ``netns_hosts``: test hosts, network namespaces joined by a bridge (``TestHosts``).

Everything imports it one way, as ``tests.harness`` (and the rehearsal as
``tests.rehearsal``): ``tests/`` is a package, so pytest (its default ``prepend``
import mode) puts the repository root on ``sys.path`` for the tests, and the
benchmarks run as modules from the repository root (``python -m bench.faults``).
The modules import each other relatively.
"""
