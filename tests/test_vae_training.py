"""VAE tasks: data iterator, loss/metrics, a short training run, eval files, diagnostics, and the
generic trainer end to end."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile
from flax import nnx
from PIL import Image

from latentlm_jax.train.state import abstract_model
from latentlm_jax.vae.audio import audio_forward_flops
from latentlm_jax.vae.data import ExampleIterator
from latentlm_jax.vae.diagnostics import (
    NOISE_SCALES,
    format_diagnostics,
    image_diagnostics,
)
from latentlm_jax.vae.image import image_forward_flops
from latentlm_jax.vae.samples import from_uint8, psnr, to_uint8
from latentlm_jax.vae.task import AudioVAETask, ImageVAETask, load_test_examples, reconstruct
from tests.helpers import tiny_vae_config, tiny_vae_run_config


def test_iterator_shards_by_process_and_resumes():
    data = [{"image": np.full((2, 2, 3), i, np.uint8)} for i in range(40)]
    its = [ExampleIterator(data, "image", 8, p, 2) for p in range(2)]
    first = [next(it) for it in its]
    rows = sorted(int(b["image"][r, 0, 0, 0]) for b in first for r in range(4))
    assert rows == list(range(8))  # the two processes' rows form global batch 0
    assert [int(v) for v in first[1]["image"][:, 0, 0, 0]] == [1, 3, 5, 7]
    second = next(its[0])
    assert (second["step"] == 1).all() and (first[0]["step"] == 0).all()
    assert its[0].get_state() == {"next_index": 16, "batches": 2}

    resumed = ExampleIterator(data, "image", 8, 0, 2)
    resumed.set_state(json.loads(json.dumps({"next_index": 8})))  # as the checkpoint stores it
    np.testing.assert_array_equal(next(resumed)["image"], second["image"])
    with pytest.raises(ValueError, match="split"):
        ExampleIterator(data, "image", 7, 0, 2)


@pytest.mark.parametrize("task_cls,name,keys", [
    (ImageVAETask, "vae_image", {"recon", "kl_or_mu", "total"}),
    pytest.param(AudioVAETask, "vae_audio", {"recon", "kl_or_mu", "stft", "total"},
                 marks=pytest.mark.slow),
])
def test_task_protocol(task_cls, name, keys):
    c = tiny_vae_config(name)
    task = task_cls()
    graphdef, params, specs = abstract_model(task, c)  # the trainer's check: Params only
    assert jax.tree.leaves(specs)
    batch = next(task.train_iterator(c, 0, 1))
    assert set(batch) == set(task.batch_logical_axes(c))
    for key, value in batch.items():
        assert value.shape == task.batch_shape(c, key)
        assert value.dtype == task.batch_dtypes(c)[key]
    model = task.build_model(c, nnx.Rngs(0))
    loss, metrics = nnx.jit(task.loss_fn)(model, batch, jax.random.key(0))
    assert set(metrics) == keys and np.isfinite(float(loss))
    assert float(metrics["total"]) == pytest.approx(float(loss))
    fwd = image_forward_flops(c.vae) if name == "vae_image" else audio_forward_flops(c.vae)
    assert task.flops_per_step(c) == pytest.approx(3 * fwd * 4)
    assert task.items_per_step(c) == ("examples", 4.0)


def test_adversarial_switch_starts_at_its_step():
    c = tiny_vae_config(**{"loss.adversarial": True, "loss.adv_start_step": 5})
    task = ImageVAETask()
    model = task.build_model(c, nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in next(task.train_iterator(c, 0, 1)).items()}
    loss_fn = nnx.jit(task.loss_fn)
    before, m_before = loss_fn(model, batch, jax.random.key(0))
    after, m_after = loss_fn(model, dict(batch, step=batch["step"] + 5), jax.random.key(0))
    assert float(m_before["adv_on"]) == 0.0 and float(m_after["adv_on"]) == 1.0
    base = float(m_before["recon"]) + c.vae.beta * float(m_before["kl_or_mu"])
    assert float(before) == pytest.approx(base, rel=1e-6)
    extra = 0.1 * float(m_after["adv_g"]) + float(m_after["adv_d"])
    assert float(after) == pytest.approx(base + extra, rel=1e-5)


def _train(task, c, steps, lr, metric="recon"):
    model = task.build_model(c, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(lr)
    opt = tx.init(params)
    fixed = {k: jnp.asarray(v) for k, v in next(task.train_iterator(c, 0, 1)).items()}

    @jax.jit
    def recon(p):  # on a fixed batch and noise draw
        return task.loss_fn(nnx.merge(graphdef, p), fixed, jax.random.key(99))[1][metric]

    @jax.jit
    def step(params, opt, batch, key):
        grads = jax.grad(lambda p: task.loss_fn(nnx.merge(graphdef, p), batch, key)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    start = float(recon(params))
    it = task.train_iterator(c, 0, 1)
    for i in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(it).items()}
        params, opt = step(params, opt, batch, jax.random.key(i))
    return start, float(recon(params))


@pytest.mark.slow
def test_short_training_lowers_reconstruction_loss():
    c = tiny_vae_config(**{"loss.recon": "l2"})
    c.train.global_batch_size = 16
    start, end = _train(ImageVAETask(), c, 40, 3e-3)
    assert end < 0.6 * start, (start, end)


@pytest.mark.slow
def test_short_audio_training_lowers_stft_loss():
    c = tiny_vae_config("vae_audio", **{"loss.recon_weight": 0.0})  # as configs/vae_audio_tiny.py
    start, end = _train(AudioVAETask(), c, 30, 3e-3, metric="stft")
    assert end < 0.8 * start, (start, end)


def test_evaluate_writes_samples(tmp_path):
    c = tiny_vae_config()
    task = ImageVAETask()
    model = task.build_model(c, nnx.Rngs(0))
    out = task.evaluate(model, c, str(tmp_path), 7)
    png = Image.open(tmp_path / "samples" / "step_7" / "reconstructions.png")
    assert png.size == (8 * 34 + 2, 2 * 34 + 2)  # 8 examples, originals + reconstructions
    images = np.stack([e["image"] for e in load_test_examples(c, 8)])
    ref = psnr(images, to_uint8(reconstruct(model, from_uint8(images))))
    assert out["psnr"] == pytest.approx(ref) and 0.0 <= out["recon_correct"] <= 1.0

    c = tiny_vae_config("vae_audio")
    task = AudioVAETask()
    out = task.evaluate(task.build_model(c, nnx.Rngs(0)), c, str(tmp_path), 3)
    for i in range(4):
        for kind in ("original", "recon"):
            wave, sr = soundfile.read(tmp_path / "samples" / "step_3" / f"{kind}_{i}.wav")
            assert wave.shape == (16000,) and sr == 16000
    assert np.isfinite(out["snr_db"]) and 0.0 <= out["recon_correct"] <= 1.0


def test_diagnostics_table():
    c = tiny_vae_config(**{"image.latent_dim": 4})
    model = ImageVAETask().build_model(c, nnx.Rngs(0))
    examples = load_test_examples(c, 64)
    r = image_diagnostics(model, examples, jax.random.key(0))
    assert [row["noise_scale"] for row in r["rows"]] == list(NOISE_SCALES)
    assert len(r["mu_std_per_dim"]) == 4
    images = np.stack([e["image"] for e in examples])
    direct = psnr(images, to_uint8(reconstruct(model, from_uint8(images))))
    assert r["rows"][0]["psnr"] == pytest.approx(direct, rel=1e-5)  # scale 0 = plain recon
    # z = μ + σε with E[σ²] = (0.75/0.8)² ≈ 0.88: std(z)² ≈ std(μ)² + 0.88 (64 σ draws: ±~35%)
    assert r["z_std"] ** 2 == pytest.approx(r["mu_std"] ** 2 + (0.75 / 0.8) ** 2, rel=0.35)
    text = format_diagnostics({"sigma": r})
    assert "sigma (sigma)" in text and len(text.splitlines()) == 2 + len(NOISE_SCALES)


@pytest.mark.slow
def test_generic_trainer_runs_the_image_vae(tmp_path):
    from latentlm_jax.train.trainer import train

    c = tiny_vae_run_config("vae_image")
    c.train.num_steps, c.train.log_every, c.train.eval_every, c.checkpoint.every_steps = 4, 2, 4, 4
    last = train(c, str(tmp_path), devices=jax.devices()[:1])
    assert {"recon", "kl_or_mu", "total", "examples_per_sec"} <= set(last)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert (tmp_path / "samples" / "step_4" / "reconstructions.png").exists()
