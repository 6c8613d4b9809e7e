"""Unit tests: pure logic, one file per module, named after it (see tests/README.md)."""
