# Everything runs inside a virtual environment under the repository, made on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench gpu-wheels clean

DEMO_WORKDIR ?= workdirs/demo

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole suite; JAX sees 4 CPU devices so data-parallel tests run everywhere.
test: $(STAMP)
	$(PY) -m ruff check mipae_jax experiments tests benchmarks
	XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0" $(PY) -m pytest -q --durations=20 tests

# Train MIPAE on rendered Moving dSprites on CPU, then the LSTM, then evaluate.
demo: $(STAMP)
	$(PY) -m experiments.main --config=experiments/configs/demo.py --workdir=$(DEMO_WORKDIR)

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.run --quick

# Wheels that a GPU machine's preinstalled image may lack, for benchmarks/gpu.sh there.
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps -d .whl ml-collections==1.1.0

lint: $(STAMP)
	$(PY) -m ruff check mipae_jax experiments tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
