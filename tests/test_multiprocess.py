"""Multi-host training on one machine: 2 JAX processes × 4 CPU devices, gloo collectives."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "lm_tiny.py")
ARGS = ["--config", TINY, "--config.train.num_steps=6", "--config.train.log_every=1",
        "--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.mlp_dim=64",
        "--config.model.head_dim=8", "--config.data.seq_len=32",
        "--config.train.global_batch_size=8", "--config.metrics.peak_tflops_per_device=1",
        "--config.mesh.ici.data=2", "--config.mesh.ici.fsdp=2", "--config.mesh.ici.tensor=2"]


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               LATENTLM=f"{sys.executable} -m latentlm_jax.cli.main")
    env.pop("XLA_FLAGS", None)
    multi = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local_cpu.sh"), "2", "4", "train",
         "--workdir", str(tmp_path / "multi"), *ARGS],
        capture_output=True, text=True, env=env, timeout=400)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    assert "processes=2" in multi.stdout
    single_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    single = subprocess.run(
        [sys.executable, "-m", "latentlm_jax.cli.main", "train",
         "--workdir", str(tmp_path / "single"), *ARGS],
        capture_output=True, text=True, env=single_env, timeout=400)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=1e-5, err_msg=f"step {step}")
    # Both processes wrote their own data-iterator state into the checkpoint.
    data_dir = tmp_path / "multi" / "checkpoints" / "6" / "data"
    assert sorted(os.listdir(data_dir)) == ["process_0-of-2.json", "process_1-of-2.json"]
