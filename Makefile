# `make demo` / `make test` work on a fresh clone: they create .venv with the default python3 when
# missing, install the package (with libtpu, so the TPU memory proofs run on any host), and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,tpu]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in data: σ-VAEs → latents → LatentLM → generate → score → report
# (runs/demo/report/index.html). Re-running reuses finished stages and resumes unfinished ones.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/latentlm demo --workdir runs/demo $(DEMO_ARGS)

# Everything, slow end-to-end tests included (what CI runs via .ci/run).
test: $(STAMP)
	$(BIN)/ruff check latentlm_jax configs launch tests setup.py
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# The edit loop: lint and the tests not marked `slow` (training runs of more than a few steps,
# CLI and multi-process subprocesses, anything over ~10 s); `make test` still runs those. Most of
# the time is XLA compiling on CPU, so compiled programs are kept across runs in $(JAX_CACHE)
# (the first run fills it; a changed program is compiled afresh; `make clean` removes it).
JAX_CACHE := $(VENV)/jax_cache
test-fast: $(STAMP)
	$(BIN)/ruff check latentlm_jax configs launch tests setup.py
	JAX_COMPILATION_CACHE_DIR="$(CURDIR)/$(JAX_CACHE)" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check latentlm_jax configs launch tests setup.py

clean:
	rm -rf $(VENV) *.egg-info
