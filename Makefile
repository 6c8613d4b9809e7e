# The two commands of the README: `make demo` and `make test`.
# Both build .venv from scratch when it is missing, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# torch is pinned: the registry's newest torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	# compat: setuptools' default editable mode serves metaflow_extensions through an
	# import hook that Metaflow's extension discovery does not see.
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat

venv: $(BIN)/python

demo: venv
	$(BIN)/python examples/plain-torchrun/launch_local.py

test: venv
	$(BIN)/python -m pytest tests

bench: venv
	bench/run_in_netns.sh $(BIN)/python bench/rendezvous_round.py
