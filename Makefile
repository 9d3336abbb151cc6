# Everything runs inside a virtual environment under the repository, made on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-full lint demo bench gpu-wheels lock clean

DEMO_WORKDIR ?= workdirs/demo
PRETRAINED ?= pretrained/moving_dsprites_two_sprites

LOCK := requirements/lock.txt

# The exact versions tested (requirements/lock.txt) as constraints, so every install
# and CI run is the same; setup.cfg's install_requires holds the compatible ranges. The
# reference LPIPS (parity tests only) goes in without its dependencies: it asks for
# torchvision, whose wheel here links CUDA (the tests stub torchvision.models).
$(STAMP): setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[test,video-metrics]'
	$(PY) -m pip install -q -c $(LOCK) --no-deps lpips==0.1.4
	touch $(STAMP)

install: $(STAMP)

# The whole suite; JAX sees 4 CPU devices so data-parallel tests run everywhere. One
# pytest-xdist worker per core, each taking whole files (a file's shared fixtures are
# built once), the longest first (tests/conftest.py); TEST_WORKERS=0 runs it in this
# process instead. XLA compiles for compile time, not run time: the suite compiles
# hundreds of tiny programs and runs each a few times. Level 0, and XLA:CPU's loop
# emitters instead of its fusion emitters, which compile the tiny programs faster to the
# same bits (`python -m benchmarks.suite_compile`; BENCHMARKS.md has the figures).
TEST_WORKERS ?= auto
PYTEST := XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false" $(PY) -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m ruff check mipae_jax experiments tests benchmarks
	$(PYTEST) tests

# Train MIPAE on rendered Moving dSprites on CPU, then the LSTM, then evaluate; then draw
# the shipped pretrained model (inference on a few videos) into the same report.
demo: $(STAMP)
	$(VENV)/bin/mipae-train --config=demo --workdir=$(DEMO_WORKDIR)
	$(PY) -m mipae_jax.pretrained --model=$(PRETRAINED) --workdir=$(DEMO_WORKDIR)

# The suite with its full-size trials too (tests marked `full`: the probe estimator's whole
# self-check at 20,000 and 40,000 frames, ...): about as long again as `make test`.
test-full: $(STAMP)
	$(PYTEST) --full tests

bench: $(STAMP)
	$(PY) -m pip install -q -c $(LOCK) -e '.[bench]'
	$(PY) -m benchmarks.run --quick

# Wheels that a GPU machine's preinstalled image may lack, for benchmarks/gpu.sh there.
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps -d .whl ml-collections==1.1.0

# Rewrite the lock from the environment as it stands (after a deliberate upgrade).
lock: $(STAMP)
	{ echo '# The exact versions tested together (Python 3.11, CPU): make install, make test and CI'; \
	  echo '# install with -c requirements/lock.txt. Regenerate with: make lock'; \
	  $(PY) -m pip list --format=freeze --exclude-editable | grep -v '^mipae' ; } > $(LOCK)

lint: $(STAMP)
	$(PY) -m ruff check mipae_jax experiments tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
