"""Helpers the tests and the benchmarks share: real processes, found and cleaned up by a marker.

- ``processes``: the marker variable every process of a test job carries, and
  how to find and kill the processes that carry it;
- ``torchrun_nodes``: the nodes of a job as real torchrun agents (``Job``), on
  loopback or on test hosts;
- ``flow_runs``: real Metaflow flows of ``tests/flows`` in isolation (``FlowRunner``);
- ``netns_hosts``: test hosts, network namespaces joined by a bridge (``TestHosts``).

Tests import it as ``harness``: pytest puts ``tests/`` on ``sys.path``, as
``tests/`` is no package. Benchmarks run as modules from the repository root
(``python -m bench.faults``) and import it as ``tests.harness``. The modules
import each other relatively, so both names work.
"""
