"""The training loop: metrics, bitwise resume, same math on any mesh, accumulation, SIGTERM."""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from latentlm_jax.train.trainer import train
from tests.helpers import (
    LM_TINY,
    latentlm_command,
    losses,
    one_device_env,
    read_metrics,
    tiny_lm_config,
)

# Every test here runs the trainer (or builds its whole setup and steps it): end to end.
pytestmark = pytest.mark.slow

REQUIRED = ("step", "loss", "grad_norm", "lr", "tokens_per_sec", "tflops_per_device", "mfu",
            "data_wait_frac")


def test_metrics_and_bitwise_resume(tmp_path):
    """20 steps straight == 10 steps, stop, restart, 10 steps: identical losses, bitwise."""
    c = tiny_lm_config()
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

    row = read_metrics(tmp_path / "straight")[0]
    for key in REQUIRED:
        assert key in row and np.isfinite(row[key]), key
    assert 0 <= row["data_wait_frac"] <= 1 and row["tokens_per_sec"] > 0
    events = os.listdir(tmp_path / "straight" / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


@pytest.mark.multidevice
def test_same_math_on_one_and_eight_devices(tmp_path):
    c1 = tiny_lm_config()
    c1.train.num_steps = 10
    c8 = tiny_lm_config(data=2, fsdp=2, tensor=2)
    c8.train.num_steps = 10
    train(c1, str(tmp_path / "one"), devices=jax.devices()[:1])
    train(c8, str(tmp_path / "eight"))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=1e-5, err_msg=f"step {step}")


def test_gradient_accumulation_matches_full_batch(tmp_path):
    c1 = tiny_lm_config()
    c1.train.num_steps = 5
    c2 = tiny_lm_config()
    c2.train.num_steps, c2.train.grad_accum_steps = 5, 2
    train(c1, str(tmp_path / "full"), devices=jax.devices()[:1])
    train(c2, str(tmp_path / "accum"), devices=jax.devices()[:1])
    a, b = losses(tmp_path / "full"), losses(tmp_path / "accum")
    # The first loss is of identical parameters: only the averaging order differs.
    np.testing.assert_allclose(b[1], a[1], rtol=2e-3)
    for step in a:  # per-microbatch token means vs the global mean: close, not identical
        np.testing.assert_allclose(b[step], a[step], rtol=2e-2)


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    workdir = tmp_path / "w"
    cmd = latentlm_command("train", "--config", LM_TINY, "--workdir", str(workdir),
                           "--config.train.num_steps=100000", "--config.train.log_every=1",
                           "--config.checkpoint.every_steps=100000",
                           "--config.model.num_layers=1",
                           "--config.metrics.peak_tflops_per_device=1")
    env = one_device_env()
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

    c = tiny_lm_config()
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
    c = tiny_lm_config()
    c.data.source, c.data.text_files = "text_files", (str(corpus),)
    c.train.num_steps = 4
    train(c, str(tmp_path / "w"), devices=jax.devices()[:1])
    last = read_metrics(tmp_path / "w")[-1]
    assert last["data/skipped/too_long"] >= 1
    assert last["data/skipped/invalid_utf8"] >= 1

    c.data.bad_input = "error"
    from latentlm_jax.data.bad_input import DataError

    with pytest.raises(DataError, match="too_long|invalid_utf8"):
        train(c, str(tmp_path / "w_error"), devices=jax.devices()[:1])
