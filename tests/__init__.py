"""The test suite; a package, so that tests and benchmarks import its helpers one way:
``tests.harness`` and ``tests.rehearsal`` (see tests/README.md)."""
