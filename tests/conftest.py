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
import subprocess
import sys

# The tests' models are tiny, so XLA's CPU compiler, not running them, is most of the suite's
# time. Two flags cut it without changing a program: backend optimisation level 0 halves it (less
# LLVM optimisation), and on jaxlib versions that still have the choice, XLA's older (non-MLIR)
# fusion emitters compile a third faster again (the whole suite 726 → 618 s on jax 0.10; jax 0.12
# has only the new emitters and rejects the flag). Subprocesses get the same via
# tests/helpers.py:xla_flags. Benchmarks and user runs never use them.
_OPTIONAL_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)


def _xla_accepts(flag: str) -> bool:
    """Whether this jaxlib's XLA knows ``flag``: an unknown flag in XLA_FLAGS aborts the
    process that starts a backend, so ask a throwaway one."""
    env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                         capture_output=True, timeout=120)
    return run.returncode == 0


def _test_xla_flags() -> str:
    # Probed once per session: the pytest-xdist workers and test subprocesses inherit the answer.
    if "LATENTLM_TEST_XLA_FLAGS" not in os.environ:
        flags = ["--xla_backend_optimization_level=0"]
        flags += [f for f in _OPTIONAL_XLA_FLAGS if _xla_accepts(f)]
        os.environ["LATENTLM_TEST_XLA_FLAGS"] = " ".join(flags)
    return os.environ["LATENTLM_TEST_XLA_FLAGS"]


TEST_XLA_FLAGS = _test_xla_flags()
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
