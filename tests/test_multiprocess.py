"""Multi-host training on one machine: 2 JAX processes × 4 CPU devices, gloo collectives."""

import os
import subprocess

import numpy as np
import pytest

from tests.helpers import LM_TINY, ROOT, TINY_MODEL, latentlm_command, losses, multiprocess_env

MODEL = {**TINY_MODEL, "num_layers": 1}
ARGS = ["--config", LM_TINY, "--config.train.num_steps=6", "--config.train.log_every=1",
        *(f"--config.model.{k}={v}" for k, v in MODEL.items()), "--config.data.seq_len=32",
        "--config.train.global_batch_size=8", "--config.metrics.peak_tflops_per_device=1",
        "--config.mesh.ici.data=2", "--config.mesh.ici.fsdp=2", "--config.mesh.ici.tensor=2"]


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

    def close(self):
        for s in self.shards:
            s.close()


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_match_one(tmp_path, monkeypatch):
    env = multiprocess_env(LATENTLM=" ".join(latentlm_command()))
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
