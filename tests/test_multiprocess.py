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


class TwoShardIterator:
    """The global batch a 2-process run assembles: process 0's rows, then process 1's."""

    def __init__(self, config):
        from latentlm_jax.data.pipeline import build_train_iterator

        self.shards = [build_train_iterator(config, process_index=i, process_count=2)
                       for i in range(2)]

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(s) for s in self.shards]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
                if isinstance(parts[0][k], np.ndarray)}

    def get_state(self):
        return [s.get_state() for s in self.shards]

    def set_state(self, state):
        for s, st in zip(self.shards, state, strict=True):
            s.set_state(st)


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_match_one(tmp_path, monkeypatch):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               LATENTLM=f"{sys.executable} -m latentlm_jax.cli.main")
    env.pop("XLA_FLAGS", None)
    multi = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local_cpu.sh"), "2", "4", "train",
         "--workdir", str(tmp_path / "multi"), *ARGS],
        capture_output=True, text=True, env=env, timeout=400)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    assert "processes=2" in multi.stdout

    # One process, 8 devices, same mesh, fed exactly the global batches of the 2-process run.
    from latentlm_jax.config.loading import apply_overrides, load_config_file, split_config_args
    from latentlm_jax.lm.task import LMTask
    from latentlm_jax.train.trainer import train

    rest, overrides = split_config_args(ARGS)
    config = apply_overrides(load_config_file(rest[1]), overrides)
    monkeypatch.setattr(LMTask, "train_iterator", lambda self, c, i, n: TwoShardIterator(c))
    train(config, str(tmp_path / "single"))

    a, b = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=1e-5, err_msg=f"step {step}")
    # Both processes wrote their own data-iterator state into the checkpoint.
    data_dir = tmp_path / "multi" / "checkpoints" / "6" / "data"
    names = set(os.listdir(data_dir))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= names, names
