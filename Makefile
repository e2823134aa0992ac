# `make demo` / `make test` work on a fresh clone: they create .venv with the default python3 when
# missing, install the package, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in data: σ-VAEs → latents → LatentLM → generate → score → report
# (runs/demo/report/index.html). Re-running reuses finished stages and resumes unfinished ones.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/latentlm demo --workdir runs/demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/ruff check latentlm_jax configs launch tests
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check latentlm_jax configs launch tests

clean:
	rm -rf $(VENV) *.egg-info
