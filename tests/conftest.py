"""Test setup: 8 host CPU devices so sharding tests run on one machine.

This runs before any test module imports jax, so the environment below must stay first. Shared
pieces (repo paths, tiny LM / LatentLM / σ-VAE configs, CLI commands and their environments,
reading a run's ``metrics.jsonl``) are plain functions in ``tests/helpers.py``:
``from tests.helpers import ...`` (pyproject puts the repo root on pytest's path).

Markers (``--strict-markers``: declare new ones in pyproject.toml): ``slow`` for end-to-end tests
(training runs of more than a few steps, CLI or multi-process subprocesses, anything over ~10 s;
``make test-fast`` skips them, ``make test`` runs them) and ``multidevice`` for tests that need the
8 devices.
"""

import os

# The tests' models are tiny, so XLA's CPU compiler, not running them, is most of the suite's
# time; its backend optimisation level 0 halves that (same programs, less LLVM optimisation).
# Subprocesses get the same via tests/helpers.py:xla_flags. Benchmarks never run with it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
