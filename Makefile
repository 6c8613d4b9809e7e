# The two commands of the README: `make demo` and `make test`.
# Both build .venv from scratch when it is missing, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench compat venv gpu-wheels

# What the demo needs: torch and the package (which brings Metaflow), nothing else.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# torch is pinned: the registry's newest torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	# compat: setuptools' default editable mode serves metaflow_extensions through an
	# import hook that Metaflow's extension discovery does not see.
	$(BIN)/pip install --quiet -e . --config-settings editable_mode=compat

# The test tools (the package's test extras: pytest, the rehearsal's S3 server and
# Kubernetes client, Lightning, Accelerate) come with the first `make test`.
$(VENV)/.test-extras: $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(BIN)/python

# Metaflow refuses to run without a user name other than root: take the first one it
# would (METAFLOW_USER, SUDO_USER, USERNAME, USER) that is not root, else "demo".
DEMO_USER := $(firstword $(filter-out root,$(METAFLOW_USER) $(SUDO_USER) $(USERNAME) $(USER)) demo)

demo: venv
	METAFLOW_USER=$(DEMO_USER) $(BIN)/python examples/hello/flow.py run

# Two test processes (pytest-xdist): most tests wait on processes they started (flows,
# pods, timeouts), so two at a time keep both cores busy; the suite is built for it
# (test hosts, ports, markers and shared environments are per test or locked).
# worksteal: a worker that runs out of tests takes the other's pending ones; with the
# default scheduling, a run of slow tests queued on one worker left the other idle
# (856 s against 643 s for the same suite on this 2-core machine).
test: $(VENV)/.test-extras
	$(BIN)/python -m pytest tests -n 2 --dist worksteal --durations=25

bench: $(VENV)/.test-extras
	bench/run_in_netns.sh $(BIN)/python -m bench.rendezvous_round

# The compatibility run (docs/compatibility.md): the named checks on each torch
# release in TORCH, each in a fresh virtual environment of about 5 GB (torch with
# its CUDA packages) that is deleted after its checks. Not part of `make test`.
# A pip constraint that caps torch must be lifted: PIP_CONSTRAINT=/dev/null.
TORCH ?= 2.6.0 2.9.1 2.11.0 2.13.0 2.14.1 2.15.0
compat: venv
	$(BIN)/python -m bench.torch_releases $(TORCH)

# The GPU path (docs/gpu.md): what a GPU machine without a package registry lacks to
# run `python3 -m bench.gpu_check` on its own torch: Metaflow, its small dependencies
# and this package, as wheels for its Python (GPU_PYTHON) in gpu-wheels/.
GPU_PYTHON ?= 3.12
gpu-wheels: venv
	rm -rf gpu-wheels
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp -d gpu-wheels $(foreach package,metaflow boto3 botocore s3transfer jmespath,$(package)==$(shell $(BIN)/python -c "from importlib.metadata import version; print(version('$(package)'))"))
	$(BIN)/pip wheel --quiet --no-deps -w gpu-wheels .
