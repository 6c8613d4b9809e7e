"""Integration tests: real torchrun agents, real flows, test hosts, the rehearsal; one file per
feature (see tests/README.md)."""
