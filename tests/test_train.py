"""The training loop: metrics, bitwise resume, same math on any mesh, accumulation, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from latentlm_jax.config.loading import load_config_file
from latentlm_jax.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "lm_tiny.py")
REQUIRED = ("step", "loss", "grad_norm", "lr", "tokens_per_sec", "tflops_per_device", "mfu",
            "data_wait_frac")


def tiny_config(**mesh):
    c = load_config_file(TINY)
    c.model.num_layers, c.model.emb_dim, c.model.mlp_dim = 2, 32, 64
    c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 4, 2, 8
    c.data.seq_len, c.train.global_batch_size = 32, 8
    c.train.num_steps, c.train.warmup_steps, c.train.log_every = 20, 2, 1
    c.checkpoint.every_steps = 10
    c.metrics.peak_tflops_per_device = 1.0  # skip calibration in tests
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = 1, 1, 1
    for k, v in mesh.items():
        c.mesh.ici[k] = v
    return c


def losses(workdir) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["loss"]
    return out


def test_metrics_and_bitwise_resume(tmp_path):
    """20 steps straight == 10 steps, stop, restart, 10 steps: identical losses, bitwise."""
    c = tiny_config()
    one = jax.devices()[:1]
    train(c, str(tmp_path / "straight"), devices=one)
    train(c, str(tmp_path / "resumed"), stop_at=10, devices=one)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["10"]
    train(c, str(tmp_path / "resumed"), devices=one)

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, 21))
    for step in range(1, 21):
        assert straight[step] == resumed[step], (step, straight[step], resumed[step])
    assert straight[20] < straight[1]  # it learns

    with open(tmp_path / "straight" / "metrics.jsonl") as f:
        row = json.loads(f.readline())
    for key in REQUIRED:
        assert key in row and np.isfinite(row[key]), key
    assert 0 <= row["data_wait_frac"] <= 1 and row["tokens_per_sec"] > 0
    events = os.listdir(tmp_path / "straight" / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


@pytest.mark.multidevice
def test_same_math_on_one_and_eight_devices(tmp_path):
    c1 = tiny_config()
    c1.train.num_steps = 10
    c8 = tiny_config(data=2, fsdp=2, tensor=2)
    c8.train.num_steps = 10
    train(c1, str(tmp_path / "one"), devices=jax.devices()[:1])
    train(c8, str(tmp_path / "eight"))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=1e-5, err_msg=f"step {step}")


def test_gradient_accumulation_matches_full_batch(tmp_path):
    c1 = tiny_config()
    c1.train.num_steps = 5
    c2 = tiny_config()
    c2.train.num_steps, c2.train.grad_accum_steps = 5, 2
    train(c1, str(tmp_path / "full"), devices=jax.devices()[:1])
    train(c2, str(tmp_path / "accum"), devices=jax.devices()[:1])
    a, b = losses(tmp_path / "full"), losses(tmp_path / "accum")
    # The first loss is of identical parameters: only the averaging order differs.
    np.testing.assert_allclose(b[1], a[1], rtol=2e-3)
    for step in a:  # per-microbatch token means vs the global mean: close, not identical
        np.testing.assert_allclose(b[step], a[step], rtol=2e-2)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "latentlm_jax.cli.main", "train", "--config", TINY,
           "--workdir", str(workdir), "--config.train.num_steps=100000",
           "--config.train.log_every=1", "--config.checkpoint.every_steps=100000",
           "--config.model.num_layers=1", "--config.metrics.peak_tflops_per_device=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    line = [ln for ln in out.splitlines() if ln.startswith("SIGTERM: saved checkpoint at step")]
    assert line, out
    step = int(line[0].split("step ")[1].split(";")[0])
    assert step >= 3
    assert str(step) in os.listdir(workdir / "checkpoints")

    # The same command again resumes from there and says so.
    cmd2 = [a if "num_steps" not in a else f"--config.train.num_steps={step + 2}" for a in cmd]
    out2 = subprocess.run(cmd2, capture_output=True, text=True, env=env, timeout=240)
    assert out2.returncode == 0, out2.stdout + out2.stderr
    assert f"Resuming from checkpoint at step {step}" in out2.stdout


def test_ema_follows_its_definition():
    """One step by hand: ema' = d·ema + (1 − d)·params' with ema initialised to the params."""
    from latentlm_jax.train.setup import build_setup

    c = tiny_config()
    c.train.ema_decay = 0.9
    setup = build_setup(c, jax.devices()[:1])
    state = setup.init_state()
    before = jax.tree.map(np.asarray, state["params"])
    np.testing.assert_array_equal(jax.tree.leaves(state["ema"])[0], jax.tree.leaves(before)[0])
    it = setup.task.train_iterator(c, 0, 1)
    from latentlm_jax.train.trainer import to_global_batch

    state, _ = setup.step_fn(state, to_global_batch(next(it), setup.batch_shardings))
    for e, p, b in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(state["params"]),
                       jax.tree.leaves(before), strict=True):
        np.testing.assert_allclose(e, 0.9 * b + 0.1 * np.asarray(p), rtol=1e-6, atol=1e-7)


def test_bad_input_is_skipped_and_counted_in_metrics(tmp_path):
    corpus = tmp_path / "corpus.txt"
    lines = [b"a short line %d" % i for i in range(40)]
    lines[5] = b"x" * 200  # longer than seq_len 32
    lines[9] = b"broken \xff\xfe utf-8"
    corpus.write_bytes(b"\n".join(lines))
    c = tiny_config()
    c.data.source, c.data.text_files = "text_files", (str(corpus),)
    c.train.num_steps = 4
    train(c, str(tmp_path / "w"), devices=jax.devices()[:1])
    with open(tmp_path / "w" / "metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    assert last["data/skipped/too_long"] >= 1
    assert last["data/skipped/invalid_utf8"] >= 1

    c.data.bad_input = "error"
    from latentlm_jax.data.bad_input import DataError

    with pytest.raises(DataError, match="too_long|invalid_utf8"):
        train(c, str(tmp_path / "w_error"), devices=jax.devices()[:1])
