"""Scalar latent normalisation (``data.latent_normalisation``) and per-target diffusion loss
weighting (``model.diffusion.loss_weighting``): issue 16, docs/fidelity.md rows 6 and 28."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.data import latent_noise as ln
from latentlm_jax.data.array_record_source import write_latents
from latentlm_jax.data.encode_latents import denormalise, normalise, to_sequence
from latentlm_jax.data.pipeline import build_document_dataset, build_train_iterator
from latentlm_jax.data.shapes_tones import ShapesTones
from latentlm_jax.generate import codecs
from latentlm_jax.lm import loss as lm_loss
from latentlm_jax.lm.evaluate import summarise
from latentlm_jax.modality import AUDIO, IMAGE
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.vae.image import ImageVAE
from tests.helpers import tiny_vae
from tests.test_latentlm import model_cfg, t2i_batch

# ---------------------------------------------------------------------------- scalar statistics
MEAN = np.array([1.0, -2.0, 0.5])
STD = np.array([1.0, 2.0, 4.0])  # per-dim std of the noisy latents
SIGMA_STD = 0.75  # std of the σ-VAE's σ (vae std 0.6)
N, D, RECORDS = 6, 3, 200


def test_scalar_stats_are_the_pooled_mean_and_std():
    """b, s from the per-dim stats are exactly the mean / std of all the latents pooled."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5000, 4)) * [0.3, 1.0, 2.5, 0.7] + [4.0, -1.0, 0.0, 2.0]
    per_dim = {"mean": z.mean(0), "std": z.std(0)}
    s = ln.scalar_stats(per_dim)
    np.testing.assert_allclose(s["mean"], np.full(4, z.mean()), rtol=1e-6)
    np.testing.assert_allclose(s["std"], np.full(4, z.std()), rtol=1e-6)
    assert ln.stats_for(per_dim, "per_dim") == per_dim
    with pytest.raises(ConfigError, match="per_dim, scalar"):
        ln.stats_for(per_dim, "global")


def test_scalar_stats_of_noisy_latents():
    """With the stats ``encode_dataset`` writes for μ (mean E μ, std² = Var μ + E σ²), b and s
    are the pooled mean / std of the noisy z = μ + σ·ε (σ one per example)."""
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(4000, 8, 3)) * [0.5, 1.0, 2.0] + [1.0, -2.0, 0.5]
    flat = mu.reshape(-1, 3)
    stats = {"mean": flat.mean(0), "std": np.sqrt(flat.var(0) + SIGMA_STD**2)}
    sigma = rng.normal(size=(4000, 1, 1)) * SIGMA_STD
    z = mu + sigma * rng.normal(size=mu.shape)
    s = ln.scalar_stats(stats)
    np.testing.assert_allclose(s["mean"][0], z.mean(), atol=0.02)
    np.testing.assert_allclose(s["std"][0], z.std(), rtol=0.01)


def test_scalar_remap_round_trip():
    """per-dim normalised → re-mapped = normalised with the scalar stats; its scalar inverse is
    the raw latent."""
    rng = np.random.default_rng(2)
    raw = (rng.normal(size=(7, D)) * STD + MEAN).astype(np.float32)
    stats = {"mean": MEAN.astype(np.float32), "std": STD.astype(np.float32)}
    scalar = ln.scalar_stats(stats)
    z_s = ln.remap_from_stats(stats, "scalar")(normalise(raw, stats))
    np.testing.assert_allclose(z_s, normalise(raw, scalar), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(denormalise(z_s, scalar), raw, rtol=1e-5, atol=1e-5)
    assert ln.remap_from_stats(stats, "per_dim") is None


# ---------------------------------------------------------------------------- the pipeline
def write_folder(root, *, stats: bool = True) -> str:
    """RECORDS image records of μ_n, normalised so that μ_n + (σ/std)·ε has unit per-dim std."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    mu_std = np.sqrt(1.0 - (SIGMA_STD / STD) ** 2)
    shard = str(root / "latents-image-00000-of-00001.array_record")
    write_latents(shard, [{"latents": (rng.normal(size=(N, D)) * mu_std).astype(np.float32),
                           "caption": f"shape {i}", "modality": "image", "index": i}
                          for i in range(RECORDS)])
    if stats:
        (root / "stats-image.json").write_text(json.dumps({
            "modality": "image", "mean": MEAN.tolist(), "std": STD.tolist(), "latent_dim": D,
            "sequence_length": N, "vae_kind": "sigma", "vae_std": 0.6, "stored": "mean",
            "sigma_std": SIGMA_STD}))
    return shard


def lm_config(shard: str, normalisation: str):
    c = base_config()
    c.model.image_latent_dim = D
    c.data.source, c.data.latent_files, c.data.seq_len = "latents", (shard,), 32
    c.data.task_weights = "text_to_image=1"
    c.data.shuffle = False
    c.data.latent_normalisation = normalisation
    c.train.global_batch_size = 2
    return c


def spans(config, n: int) -> np.ndarray:
    docs = build_document_dataset(config, process_index=0, process_count=1)
    return np.stack([docs[i].latents[0] for i in range(n)])


def test_scalar_pipeline_latents(tmp_path):
    """Under "scalar" each span is the per-dim draw re-mapped, (z_n·std_d + mean_d − b)/s: pooled
    over dims mean ≈ 0, std ≈ 1; per dim not (std_d / s)."""
    shard = write_folder(tmp_path / "lat")
    per_dim = spans(lm_config(shard, "per_dim"), RECORDS)
    scalar = spans(lm_config(shard, "scalar"), RECORDS)
    s = ln.scalar_stats({"mean": MEAN, "std": STD})
    b, scale = s["mean"][0], s["std"][0]
    np.testing.assert_allclose(scalar, (per_dim * STD + MEAN - b) / scale, rtol=1e-5, atol=1e-5)
    flat, flat_d = scalar.reshape(-1, D), per_dim.reshape(-1, D)
    np.testing.assert_allclose(flat_d.std(0), 1.0, atol=0.06)  # per-dim: unit per dim
    np.testing.assert_allclose(flat.mean(), 0.0, atol=0.06)
    np.testing.assert_allclose(flat.std(), 1.0, atol=0.06)
    np.testing.assert_allclose(flat.std(0), STD / scale, rtol=0.08)  # 0.34, 0.68, 1.36
    np.testing.assert_allclose(flat.mean(0), (MEAN - b) / scale, atol=0.06)
    # a train batch carries them too
    batch = next(build_train_iterator(lm_config(shard, "scalar"), process_index=0,
                                      process_count=1))
    rows = batch["latents"][batch["modality"] == IMAGE]
    got = {tuple(np.round(z, 4)) for z in rows}
    assert got <= {tuple(np.round(z, 4)) for z in scalar.reshape(-1, D)}


def test_scalar_needs_stats_and_bad_values(tmp_path):
    shard = write_folder(tmp_path / "lat", stats=False)
    with pytest.raises(ConfigError, match="stats-<modality>.json") as e:
        spans(lm_config(shard, "scalar"), 1)
    assert e.value.field == "data.latent_normalisation" and "\n" not in str(e.value)
    for field, value in (("data.latent_normalisation", "global"),
                         ("model.diffusion.loss_weighting", "per_token")):
        c = base_config()
        section, *rest = field.split(".")
        node = c[section]
        for k in rest[:-1]:
            node = node[k]
        node[rest[-1]] = value
        with pytest.raises(ConfigError, match="must be one of") as e:
            validate(c)
        assert e.value.field == field


# ---------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def vae():
    v = tiny_vae(image_channels=4, channel_mult=(1,), **{
        "image.downsample": 4, "image.patch_size": 4, "image.num_res_blocks": (0,),
        "image.latent_dim": 4})
    return v, ImageVAE(v, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("normalisation", ["per_dim", "scalar"])
def test_codec_uses_the_runs_normalisation(tmp_path, monkeypatch, vae, normalisation):
    """MediaCodec reads data.latent_normalisation from the run's config: encode normalises and
    decode de-normalises with the per-dim or the scalar statistics."""
    v, model = vae
    mean, std = np.array([0.5, -1.0, 0.0, 2.0]), np.array([0.5, 1.0, 2.0, 3.0])
    (tmp_path / "stats-image.json").write_text(json.dumps({"mean": mean.tolist(),
                                                           "std": std.tolist()}))
    vae_config = base_config()
    vae_config.vae = v
    monkeypatch.setattr(codecs, "load_run_config", lambda workdir: vae_config)
    monkeypatch.setattr(codecs, "inference_mesh", lambda config, devices: None)
    monkeypatch.setattr(codecs, "load_model", lambda workdir, config, mesh: (model, config, 0))
    c = base_config()
    c.data.image_vae_workdir, c.data.latent_stats_dir = "vae", str(tmp_path)
    c.data.latent_normalisation = normalisation
    codec = codecs.MediaCodec(c, IMAGE)
    if normalisation == "scalar":
        s = ln.scalar_stats({"mean": mean, "std": std})
        b, scale = s["mean"], s["std"]
        assert np.ptp(scale) == 0 and np.ptp(b) == 0
    else:
        b, scale = mean, std
    images = np.stack([ShapesTones(split="test", seed=0)[i]["image"] for i in range(2)])
    mu = to_sequence(np.asarray(model.mode(jnp.asarray(images, jnp.float32) / 127.5 - 1.0)))
    np.testing.assert_allclose(codec.encode_batch(images), (mu - b) / scale, rtol=1e-5,
                               atol=1e-5)
    h, w, d = codec.grid()
    z = np.random.default_rng(0).normal(size=(2, h * w, d)).astype(np.float32)
    expected = codec._as_media(np.asarray(model.decode(jnp.asarray(
        (z * scale + b).reshape(2, h, w, d).astype(np.float32)))))
    np.testing.assert_array_equal(codec.decode_batch(z), expected)


# ---------------------------------------------------------------------------- loss weighting
LAMBDA = 0.5


def _fake_diffusion_loss(head, x0, cond, mask, rng, schedule, **kw):
    """A per-target loss l_j = x0_j[0]², averaged over the masked targets (as the real one)."""
    per = jnp.square(x0[..., 0])
    count = mask.sum()
    return jnp.sum(per * mask) / jnp.maximum(count, 1), {}


def _hand(batch, dims, weighting: str) -> float:
    """λ · the diffusion loss by NumPy from the fake per-target losses."""
    nxt = np.roll(np.asarray(batch["latents"]), -1, axis=1)
    mask, mod = np.asarray(batch["latent_mask"]), np.asarray(batch["latent_modality"])
    per = {m: nxt[mask & (mod == m)][:, 0] ** 2 for m in dims}
    if weighting == "per_modality":
        return LAMBDA * sum(p.mean() for p in per.values() if len(p))
    return LAMBDA * np.concatenate(list(per.values())).mean()


def two_rows():
    """Two packed rows (text→image + audio→text each); the second keeps no audio target."""
    a, b = t2i_batch(0), t2i_batch(1)
    out = {k: jnp.concatenate([a[k], b[k]]) for k in a}
    audio = np.asarray(out["latent_modality"]) == AUDIO
    audio[0] = False
    out["latent_mask"] = out["latent_mask"] & ~jnp.asarray(audio)
    return out


@pytest.fixture(scope="module")
def model():
    cfg = model_cfg()
    cfg.diffusion.loss_weight = LAMBDA
    return LatentLM(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("target_fraction", [0.0, 0.25])
def test_per_target_weighting_by_hand(monkeypatch, model, target_fraction):
    """per_target = λ·(all targets' losses)/(their count); per_modality = λ·Σ_m mean_m; they
    differ when the modalities' counts differ (image 8, audio 2). Masked and gathered paths."""
    monkeypatch.setattr(lm_loss, "diffusion_loss", _fake_diffusion_loss)
    monkeypatch.setattr(model, "diffusion",
                        model.diffusion._replace(target_fraction=target_fraction))
    batch = two_rows()
    got = {}
    for w in lm_loss.LOSS_WEIGHTINGS:
        loss, metrics = lm_loss.latentlm_loss(model, batch, jax.random.key(0), weighting=w)
        got[w] = float(loss - metrics["ce"])
        np.testing.assert_allclose(got[w], _hand(batch, model.dims, w), rtol=1e-5)
        assert int(metrics["image_latents"]) == 8 and int(metrics["audio_latents"]) == 2
    assert abs(got["per_target"] - got["per_modality"]) > 1e-2


def test_per_target_with_the_real_head_and_one_modality(model):
    """With the real diffusion loss: per_target = ce + λ·Σ_m diff_m·n_m / Σ_m n_m, metrics the
    same under both weightings; with one modality both weightings give the same loss."""
    batch, key = two_rows(), jax.random.key(1)
    loss_m, met_m = lm_loss.latentlm_loss(model, batch, key, weighting="per_modality")
    loss_t, met_t = lm_loss.latentlm_loss(model, batch, key, weighting="per_target")
    for k in met_m:
        np.testing.assert_allclose(met_t[k], met_m[k], rtol=1e-6)
    n_i, n_a = float(met_t["image_latents"]), float(met_t["audio_latents"])
    expected = met_t["ce"] + LAMBDA * (met_t["diff/image"] * n_i + met_t["diff/audio"] * n_a) / (
        n_i + n_a)
    np.testing.assert_allclose(loss_t, expected, rtol=1e-6)
    np.testing.assert_allclose(loss_m, met_m["ce"] + LAMBDA * (met_m["diff/image"]
                                                               + met_m["diff/audio"]), rtol=1e-6)
    # the eval summary adds them up the same way
    sums = {"ce": 2.0, "ce_count": 4.0, "image": 6.0, "image_count": 3.0, "audio": 2.0,
            "audio_count": 1.0}
    dims = {IMAGE: 3, AUDIO: 5}
    assert summarise(sums, dims, LAMBDA, 1, "per_target")["loss"] == pytest.approx(
        0.5 + LAMBDA * 8.0 / 4.0)
    assert summarise(sums, dims, LAMBDA, 1)["loss"] == pytest.approx(0.5 + LAMBDA * 4.0)
    # one modality: no audio target in the batch (its term is exactly 0 under both)
    image_only = {**batch, "latent_mask": batch["latent_mask"]
                  & (batch["latent_modality"] == IMAGE)}
    a, met = lm_loss.latentlm_loss(model, image_only, key, weighting="per_modality")
    b = lm_loss.latentlm_loss(model, image_only, key, weighting="per_target")[0]
    assert int(met["audio_latents"]) == 0 and float(met["diff/audio"]) == 0.0
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.multidevice
def test_per_target_on_a_batch_sharded_layout(model):
    """Rows sharded over 2 devices: the per-target mean is over the global batch."""
    batch, key = two_rows(), jax.random.key(2)
    fn = nnx.jit(lambda m, b: lm_loss.latentlm_loss(m, b, key, weighting="per_target")[0])
    expected = fn(model, batch)
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    nnx.update(model, jax.device_put(nnx.state(model), NamedSharding(mesh, P())))
    sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
    np.testing.assert_allclose(fn(model, sharded), expected, rtol=1e-5)


def test_task_passes_the_weighting():
    from latentlm_jax.lm.task import LMTask

    c = base_config()
    c.model.image_latent_dim = 4
    c.model.diffusion.loss_weighting = "per_target"
    assert LMTask(c).loss_fn.keywords == {"weighting": "per_target"}
