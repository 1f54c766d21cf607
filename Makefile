# svdq — make demo | make test | make lint | make bench
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch on this machine's disk. GPU hosts: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# or TORCH_SPEC= to keep whatever torch is installed.
TORCH_SPEC ?= torch==2.13.0
# What `make gpu-check` installs when the venv's torch turns out to be a CPU build.
GPU_TORCH_SPEC ?= torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

.PHONY: install demo test test-slow test-overlap test-unit test-integration lint format bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The torch stamp's name carries a hash of TORCH_SPEC, so `make install TORCH_SPEC=...cu128` over
# a venv built with another spec installs torch again. --force-reinstall --no-deps: pip takes
# 2.13.0+cpu as meeting torch==2.13.0 and would keep it; the second call adds the new build's
# dependencies (the nvidia-* wheels of a CUDA build).
# Only a TORCH_SPEC given on the command line or in the environment replaces the torch an earlier
# install put in: a later `make lint`/`make test`/`make gpu-check` (TORCH_SPEC from this file)
# keeps the CUDA build `make install TORCH_SPEC=...cu128` installed, whatever its stamp is named.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_SPEC)' | sha1sum | cut -c1-12)
ifeq ($(origin TORCH_SPEC),file)
ifneq ($(wildcard $(VENV)/.torch-*),)
TORCH_STAMP := $(firstword $(wildcard $(VENV)/.torch-*))
endif
endif

$(TORCH_STAMP): | $(BIN)/python
	$(if $(strip $(TORCH_SPEC)),$(BIN)/pip install -q --force-reinstall --no-deps $(TORCH_SPEC))
	$(if $(strip $(TORCH_SPEC)),$(BIN)/pip install -q $(TORCH_SPEC))
	rm -f $(VENV)/.torch-*
	touch $@

$(VENV)/.installed: $(BIN)/python pyproject.toml $(TORCH_STAMP)
	$(BIN)/pip install -q -e '.[worker,dev,api]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/svdq demo

# One pytest-xdist worker per CPU; each test file runs whole in one of them (its module
# fixtures are started once), and each worker has its own redis-server, S3 server and session
# worker (tests/conftest.py). PYTEST_XDIST_AUTO_NUM_WORKERS=N overrides the count.
XDIST := -n auto --dist loadfile

# `make test` leaves out the scenarios marked slow (killed hosts, Redis failovers, real
# Chromium, long outages): `make test-slow` runs those, and CI (.ci/run) runs both.
test: install
	$(BIN)/pytest -q $(XDIST) -m "not slow"

test-slow: install
	$(BIN)/pytest -q $(XDIST) -m slow

# The fault suite's worker scenarios (killed children, a poison job, a hung job, a whole worker
# killed, the store down mid-job) with overlap on (SVDQ_OVERLAP=2: two jobs in one process,
# worker/overlap.py and worker/sharing.py); CI runs it after test-slow (a few minutes).
OVERLAP_TESTS := tests/faults/test_workers.py tests/faults/test_overlap.py \
	tests/faults/test_adversary_store.py
test-overlap: install
	SVDQ_TEST_OVERLAP=2 $(BIN)/pytest -q $(XDIST) $(OVERLAP_TESTS)

test-unit: install
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q $(XDIST) tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p build/typecheck/svdq
	@for d in shared producer worker; do ln -sfn ../../../$$d build/typecheck/svdq/$$d; done
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/overhead.py

# GPU acceptance (bench/gpu_check.py): CUDA torch if needed, pytest -m gpu, bench/gpu.py per
# variant with weights, bench/results/gpu-<card>.json. On a host without a GPU: "no CUDA here".
gpu-check: install
	$(BIN)/python bench/gpu_check.py --torch-spec "$(GPU_TORCH_SPEC)"

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
