"""Fresh σ-VAE noise (docs/vae.md "Fresh noise"): encoding stores μ; the pipeline draws
z = μ + σ·ε each time a span is read (``data.latent_noise=fresh``, resumable bitwise) or once per
example (``frozen``); old folders of stored samples; the understanding-input setting."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.data import latent_noise as ln
from latentlm_jax.data.array_record_source import LatentArrayRecordSource, write_latents
from latentlm_jax.data.encode_latents import denormalise, encode_dataset, load_stats, to_sequence
from latentlm_jax.data.pipeline import (
    build_document_dataset,
    build_eval_rows,
    build_train_iterator,
)
from latentlm_jax.data.shapes_tones import ShapesTones
from latentlm_jax.generate import codecs
from latentlm_jax.modality import IMAGE
from latentlm_jax.vae import codec as vae_codec
from latentlm_jax.vae.image import ImageVAE
from tests.helpers import tiny_vae

N, D, RECORDS = 6, 3, 12
STD = np.array([0.5, 1.0, 2.0], np.float32)  # per-dim std of the noisy latents
VAE_STD = 0.6


def test_numpy_sigma_matches_the_sigma_vae():
    """The pipeline's NumPy σ has the distribution of vae/codec.py:sample_sigma (n·std/0.8)."""
    assert ln.SIGMA_SCALE == vae_codec.SIGMA_SCALE
    n = 200_000
    ours = ln.sample_sigma(np.random.default_rng(0), n, VAE_STD)
    theirs = np.asarray(vae_codec.sample_sigma(jax.random.key(0), n, VAE_STD))
    for x in (ours, theirs):
        assert x.dtype == np.float32
        assert abs(x.mean()) < 0.01
        np.testing.assert_allclose(x.std(), VAE_STD / 0.8, rtol=0.01)
        np.testing.assert_allclose(np.abs(x).mean(), VAE_STD / 0.8 * np.sqrt(2 / np.pi),
                                   rtol=0.01)


# ---------------------------------------------------------------------------- a latents folder
def write_folder(root, stored: str | None = "mean", *, stats: bool = True) -> str:
    """RECORDS image records of normalised μ [N, D] (index field set) and their stats file
    (``stored=None``: the format before fresh noise)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    shard = str(root / "latents-image-00000-of-00001.array_record")
    write_latents(shard, [{"latents": rng.normal(size=(N, D)).astype(np.float32),
                           "caption": f"shape {i}", "modality": "image", "index": i}
                          for i in range(RECORDS)])
    if stats:
        s = {"modality": "image", "mean": [0.0] * D, "std": STD.tolist(), "latent_dim": D,
             "sequence_length": N, "vae_kind": "sigma", "vae_std": VAE_STD}
        if stored is not None:
            s |= {"stored": stored, "sigma_std": VAE_STD / 0.8 if stored == "mean" else 0.0}
        (root / "stats-image.json").write_text(json.dumps(s))
    return shard


def lm_config(shard: str, noise: str = "fresh", **data):
    c = base_config()
    c.model.image_latent_dim = D
    c.data.source, c.data.latent_files, c.data.seq_len = "latents", (shard,), 32
    c.data.latent_noise = noise
    c.data.task_weights = "text_to_image=1"
    c.train.global_batch_size = 2
    for k, v in data.items():
        c.data[k] = v
    return c


def span_latents(config, indices) -> list[np.ndarray]:
    docs = build_document_dataset(config, process_index=0, process_count=1)
    return [docs[i].latents[0] for i in indices]


def test_fresh_noise_differs_across_epochs_frozen_does_not(tmp_path):
    shard = write_folder(tmp_path / "lat")
    stored = [LatentArrayRecordSource(shard)[i]["latents"] for i in range(RECORDS)]
    # unshuffled: stream elements i and i + RECORDS are the same record in epochs 1 and 2
    fresh = span_latents(lm_config(shard, shuffle=False), [0, 3, RECORDS, RECORDS + 3])
    frozen = span_latents(lm_config(shard, "frozen", shuffle=False),
                          [0, 3, RECORDS, RECORDS + 3])
    for got in (fresh, frozen):  # noise is drawn onto μ, one σ per example
        for z, mu in zip(got, [stored[0], stored[3]] * 2, strict=True):
            ratio = (z - mu) / (ln.sigma_std(VAE_STD) / STD)  # = σ/σ_std · ε
            assert np.abs(z - mu).max() > 1e-3 and np.isfinite(ratio).all()
    assert np.abs(fresh[0] - fresh[2]).max() > 1e-3 and np.abs(fresh[1] - fresh[3]).max() > 1e-3
    np.testing.assert_array_equal(frozen[0], frozen[2])
    np.testing.assert_array_equal(frozen[1], frozen[3])
    # the same (seed, stream index) gives the same draw; another data.seed another one
    np.testing.assert_array_equal(fresh[0], span_latents(lm_config(shard, shuffle=False), [0])[0])
    other = span_latents(lm_config(shard, shuffle=False, seed=1), [0])[0]
    assert np.abs(other - fresh[0]).max() > 1e-3


def test_fresh_noise_resumes_bitwise(tmp_path):
    shard = write_folder(tmp_path / "lat")
    c = lm_config(shard, task_weights="")  # every task: interleaved spans draw too
    it = build_train_iterator(c, process_index=0, process_count=1)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    again = build_train_iterator(c, process_index=0, process_count=1)
    again.set_state(state)
    for a, b in zip([next(again) for _ in range(2)], expected, strict=True):
        for k in ("tokens", "latents", "latent_mask"):
            np.testing.assert_array_equal(a[k], b[k])
    assert np.abs(expected[0]["latents"]).sum() > 0


def test_eval_rows_are_fixed_and_noisy(tmp_path):
    shard = write_folder(tmp_path / "lat")
    c = lm_config(shard, eval_latent_files=(shard,), eval_examples=8)
    a, ids_a = build_eval_rows(c)
    b, ids_b = build_eval_rows(c)
    np.testing.assert_array_equal(a["latents"], b["latents"])
    np.testing.assert_array_equal(ids_a, ids_b)
    src = LatentArrayRecordSource(shard)
    stored = {tuple(np.round(z, 5)) for i in range(len(src)) for z in src[i]["latents"]}
    rows = a["latents"].reshape(-1, D)
    rows = rows[np.abs(rows).sum(1) > 0]  # the latents of the rows, padding left out
    assert len(rows) and not any(tuple(np.round(z, 5)) in stored for z in rows)


def test_noisy_latents_have_unit_scale():
    """With μ_n normalised by the noisy statistics, μ_n + (σ/std)·ε has ~zero mean, unit std."""
    rng = np.random.default_rng(0)
    sigma_std = 0.7
    mu = rng.normal(size=(400, 16, 2)) * [1.5, 0.2] + [3.0, -1.0]  # [examples, N, D]
    mean = mu.reshape(-1, 2).mean(0)
    std = np.sqrt(mu.reshape(-1, 2).var(0) + sigma_std**2)  # as encode_dataset computes it
    spec = ln.spec_from_stats({"stored": "mean", "std": std.tolist(), "sigma_std": sigma_std})
    z = ln.draw_batch(((mu - mean) / std).astype(np.float32), spec, np.random.default_rng(1))
    flat = z.reshape(-1, 2)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=0.05)


@pytest.mark.parametrize("stored", [None, "sample"])
def test_folders_of_stored_samples(tmp_path, stored):
    """Encoded before fresh noise (no "stored") or by a plain VAE: fresh is one ConfigError,
    frozen reads the latents as stored."""
    shard = write_folder(tmp_path / "lat", stored)
    with pytest.raises(ConfigError, match="re-encode") as e:
        build_train_iterator(lm_config(shard), process_index=0, process_count=1)
    assert e.value.field == "data.latent_noise" and "\n" not in str(e.value)
    assert ("plain VAE" in str(e.value)) == (stored == "sample")
    got = span_latents(lm_config(shard, "frozen", shuffle=False), range(RECORDS))
    src = LatentArrayRecordSource(shard)
    for i, z in enumerate(got):
        np.testing.assert_array_equal(z, src[i]["latents"])


def test_shards_without_stats_are_used_as_stored(tmp_path):
    shard = write_folder(tmp_path / "lat", stats=False)
    got = span_latents(lm_config(shard, shuffle=False), [0])[0]
    np.testing.assert_array_equal(got, LatentArrayRecordSource(shard)[0]["latents"])


def test_bad_latent_noise_value():
    c = base_config()
    c.data.latent_noise = "sometimes"
    with pytest.raises(ConfigError, match="fresh, frozen") as e:
        validate(c)
    assert e.value.field == "data.latent_noise"


# ---------------------------------------------------------------------------- with a σ-VAE
def _small_vae(kind: str = "sigma") -> ImageVAE:
    """A random image VAE, as small as its geometry allows (8×8×4 latents)."""
    v = tiny_vae(kind=kind, image_channels=4, channel_mult=(1,), **{
        "image.downsample": 4, "image.patch_size": 4, "image.num_res_blocks": (0,),
        "image.latent_dim": 4})
    return ImageVAE(v, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def vae():
    return _small_vae()


def test_a_plain_vae_stores_one_sample_and_fresh_refuses_it(tmp_path):
    stats = encode_dataset(_small_vae("plain"), "vae_image", ShapesTones(split="train", seed=0),
                           str(tmp_path), num_examples=4, batch_size=4)
    assert stats["stored"] == "sample" and stats["sigma_std"] == 0.0
    shard = str(tmp_path / "latents-image-00000-of-00001.array_record")
    with pytest.raises(ConfigError, match="plain VAE"):
        ln.make_latent_noise("fresh", 0, [shard])
    assert ln.make_latent_noise("frozen", 0, [shard]) is None  # used as stored


def test_encoded_records_hold_normalised_mu(tmp_path, vae):
    ds = ShapesTones(split="train", seed=0)
    stats = encode_dataset(vae, "vae_image", ds, str(tmp_path), num_examples=12, batch_size=8)
    images = np.stack([ds[i]["image"] for i in range(12)])
    mu = to_sequence(np.asarray(vae.mode(jnp.asarray(images, jnp.float32) / 127.5 - 1.0)))
    loaded = load_stats(str(tmp_path), "image")
    src = LatentArrayRecordSource(str(tmp_path / "latents-image-00000-of-00001.array_record"))
    z = np.stack([src[i]["latents"] for i in range(12)])
    np.testing.assert_allclose(denormalise(z, loaded), mu, rtol=1e-4, atol=1e-4)
    assert stats["stored"] == loaded["stored"] == "mean"
    np.testing.assert_allclose(loaded["sigma_std"], vae.std / 0.8)
    flat = mu.reshape(-1, mu.shape[-1]).astype(np.float64)  # std of z = μ + σ·ε: Var μ + E σ²
    np.testing.assert_allclose(loaded["std"], np.sqrt(flat.var(0) + (vae.std / 0.8) ** 2),
                               rtol=1e-4)
    np.testing.assert_allclose(loaded["mean"], flat.mean(0), rtol=1e-4, atol=1e-5)


def _codec(vae, tmp_path) -> codecs.MediaCodec:
    """A MediaCodec around ``vae`` with unit statistics (no trained run needed)."""
    codec = codecs.MediaCodec.__new__(codecs.MediaCodec)
    codec.modality, codec.name, codec.vae = IMAGE, "image", vae
    d = vae.latent_dim
    codec.stats = {"mean": np.zeros(d, np.float32), "std": np.full(d, 2.0, np.float32)}
    return codec


def test_understanding_input_mean_or_sample(vae, tmp_path):
    codec = _codec(vae, tmp_path)
    images = np.stack([ShapesTones(split="test", seed=0)[i]["image"] for i in range(3)])
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    mu = codec.encode_batch(images)
    key = jax.random.key(3)
    sample = codec.encode_batch(images, "sample", key)
    raw_mu = vae.mode(x)
    np.testing.assert_allclose(mu, to_sequence(np.asarray(raw_mu)) / 2.0, rtol=1e-5, atol=1e-6)
    expected = to_sequence(np.asarray(vae.sample_latent(raw_mu, key))) / 2.0
    np.testing.assert_allclose(sample, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sample, codec.encode_batch(images, "sample", key))
    assert np.abs(sample - mu).mean() > 1e-2
    with pytest.raises(ConfigError, match="mean, sample"):
        codec.encode_batch(images, "noisy", key)


def test_understanding_input_bad_values():
    from latentlm_jax.cli import generate
    from latentlm_jax.config.loading import load_config_file
    from latentlm_jax.demo.pipeline import check_demo_config
    from tests.helpers import config_path

    assert generate.UNDERSTANDING_INPUTS == codecs.UNDERSTANDING_INPUTS
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    args = parser.parse_args(["--workdir", "w", "--modality", "text", "--image", "a.png",
                              "--understanding-input", "noisy"])
    with pytest.raises(ConfigError, match="--understanding-input must be one of mean, sample"):
        generate.check_request(args)
    c = load_config_file(config_path("demo_fast.py"))
    assert c.generate.understanding_input == "mean"
    c.generate.understanding_input = "noisy"
    with pytest.raises(ConfigError) as e:
        check_demo_config(c)
    assert e.value.field == "generate.understanding_input"
