"""``latents.json`` and ``data.latents_dir``: the descriptor ``latentlm encode`` writes, and how a
LatentLM config takes its dims, shards, statistics and σ-VAEs from it (or refuses)."""

from __future__ import annotations

import json
import os

import pytest

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError, load_config_file
from latentlm_jax.config.validate import validate
from latentlm_jax.data import latents_dir as ld
from tests.helpers import ROOT

TINY = os.path.join(ROOT, "configs", "latentlm_tiny.py")


def _stats(modality: str, dim: int, length: int) -> dict:
    return {"modality": modality, "latent_dim": dim, "sequence_length": length, "encoded": 10,
            "captioned": 9, "without_modality": 2, "skipped": {"missing_file": 1},
            "shards": [f"latents-{modality}-00000-of-00001.array_record"]}


def _encoded(tmp_path, modality: str, dim: int, length: int, step: int = 7) -> str:
    """A folder as `latentlm encode` leaves it (files are placeholders) with a σ-VAE workdir."""
    out = tmp_path / "latents"
    out.mkdir(exist_ok=True)
    (out / f"latents-{modality}-00000-of-00001.array_record").write_bytes(b"")
    (out / f"stats-{modality}.json").write_text(  # μ stored: data.latent_noise=fresh reads it
        json.dumps({"stored": "mean", "std": [1.0] * dim, "sigma_std": 1.0}))
    vae = tmp_path / f"vae_{modality}"
    vae.mkdir(exist_ok=True)
    (vae / "config.json").write_text("{}")
    entry = ld.descriptor_entry(_stats(modality, dim, length), grid=(length, dim),
                                vae_workdir=str(vae), vae_step=step, caption_field="text",
                                source="manifest /m.jsonl", media={}, seed=0)
    ld.update_descriptor(str(out), modality, entry)
    return str(out)


@pytest.fixture
def vae_steps(monkeypatch):
    """The σ-VAE workdirs' latest checkpoint step (7 unless a test changes it)."""
    steps = {}
    monkeypatch.setattr("latentlm_jax.train.checkpoint_io.latest_step",
                        lambda workdir: steps.get(os.path.basename(workdir), 7))
    return steps


def _lm(latents: str, **model):
    c = base_config()
    c.data.source, c.data.latents_dir = "latents", latents
    for k, v in model.items():
        c.model[k] = v
    return c


def test_descriptor_holds_both_modalities_and_a_reencode_replaces_one(tmp_path):
    out = _encoded(tmp_path, "image", 8, 16)
    _encoded(tmp_path, "audio", 16, 25)
    desc = ld.read_descriptor(out)
    assert sorted(desc["modalities"]) == ["audio", "image"]
    image = desc["modalities"]["image"]
    assert (image["latent_dim"], image["sequence_length"], image["count"]) == (8, 16, 10)
    assert image["vae_workdir"] == str(tmp_path / "vae_image") and image["vae_step"] == 7
    assert image["skipped"] == {"missing_file": 1} and image["caption_field"] == "text"
    _encoded(tmp_path, "image", 4, 64)  # encoded again with another σ-VAE
    desc = ld.read_descriptor(out)
    assert desc["modalities"]["image"]["latent_dim"] == 4
    assert desc["modalities"]["audio"]["latent_dim"] == 16


def test_resolve_fills_dims_shards_stats_and_vaes_and_is_idempotent(tmp_path, vae_steps):
    out = _encoded(tmp_path, "image", 8, 16)
    _encoded(tmp_path, "audio", 16, 25)
    c = _lm(out)
    assert ld.resolve_latents_dir(c) is not None
    assert (c.model.image_latent_dim, c.model.audio_latent_dim) == (8, 16)
    assert c.data.latent_files == (
        os.path.join(out, "latents-image-00000-of-00001.array_record"),
        os.path.join(out, "latents-audio-00000-of-00001.array_record"))
    assert c.data.latent_stats_dir == out
    assert c.data.image_vae_workdir == str(tmp_path / "vae_image")
    assert c.data.audio_vae_workdir == str(tmp_path / "vae_audio")
    validate(c)
    before = c.to_json()
    ld.resolve_latents_dir(c)  # a resolved config (e.g. reloaded from config.json) passes as is
    assert c.to_json() == before
    assert ld.resolve_latents_dir(base_config()) is None  # off by default


def test_a_dim_set_to_the_encoded_value_is_accepted_another_is_an_error(tmp_path, vae_steps):
    out = _encoded(tmp_path, "image", 8, 16)
    c = _lm(out, image_latent_dim=8)
    ld.resolve_latents_dir(c)
    assert c.model.image_latent_dim == 8 and c.model.audio_latent_dim == 0
    with pytest.raises(ConfigError) as e:
        ld.resolve_latents_dir(_lm(out, image_latent_dim=5))
    msg = str(e.value)
    assert msg.startswith("config.model.image_latent_dim: 5 disagrees") and "dim 8" in msg
    with pytest.raises(ConfigError, match="model.audio_latent_dim: 16, but .* no audio latents"):
        ld.resolve_latents_dir(_lm(out, audio_latent_dim=16))


@pytest.mark.parametrize("field,value,fragment", [
    ("latent_files", ("/elsewhere/a.array_record",), "config.data.latent_files: "),
    ("latent_stats_dir", "/elsewhere", "config.data.latent_stats_dir: "),
    ("seq_len", 19, "config.data.seq_len: 19 cannot hold one image span of 16"),
])
def test_fields_that_contradict_the_folder_are_errors(tmp_path, vae_steps, field, value,
                                                      fragment):
    c = _lm(_encoded(tmp_path, "image", 8, 16))
    c.data[field] = value
    with pytest.raises(ConfigError) as e:
        ld.resolve_latents_dir(c)
    assert fragment in str(e.value)


def test_the_vae_must_be_the_one_that_encoded(tmp_path, vae_steps):
    out = _encoded(tmp_path, "image", 8, 16)
    vae_steps["vae_image"] = 9  # trained further after encoding
    with pytest.raises(ConfigError, match="at step 9, but the image latents were encoded at "
                                          "step 7"):
        ld.resolve_latents_dir(_lm(out))
    vae_steps["vae_image"] = 7
    c = _lm(out)
    c.data.image_vae_workdir = str(tmp_path / "moved")  # set by hand: used, and checked
    with pytest.raises(ConfigError, match="config.data.image_vae_workdir: .*moved is not a σ-VAE"):
        ld.resolve_latents_dir(c)


def test_missing_or_unreadable_descriptor(tmp_path):
    with pytest.raises(ConfigError, match=r"config.data.latents_dir: no latents.json in .*"
                                          r"latentlm encode"):
        ld.resolve_latents_dir(_lm(str(tmp_path)))
    (tmp_path / "latents.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        ld.resolve_latents_dir(_lm(str(tmp_path)))
    (tmp_path / "latents.json").write_text(json.dumps({"format": 1, "modalities": {}}))
    with pytest.raises(ConfigError, match="lists no latents"):
        ld.resolve_latents_dir(_lm(str(tmp_path)))


def test_a_shard_named_but_missing_is_an_error(tmp_path, vae_steps):
    out = _encoded(tmp_path, "image", 8, 16)
    os.remove(os.path.join(out, "latents-image-00000-of-00001.array_record"))
    with pytest.raises(ConfigError, match="names latents-image-00000-of-00001.array_record"):
        ld.resolve_latents_dir(_lm(out))


def test_validation_of_the_field():
    c = base_config()
    c.data.latents_dir = "x"
    with pytest.raises(ConfigError, match="data.latents_dir: needs data.source='latents'"):
        validate(c)
    c.data.source, c.task = "shapes_tones", "vae_image"
    with pytest.raises(ConfigError, match="data.latents_dir: latents train a LatentLM"):
        validate(c)


def test_latentlm_tiny_keeps_the_demo_paths_and_takes_a_folder_as_argument():
    demo = load_config_file(TINY)
    assert demo.data.latents_dir == "" and demo.model.image_latent_dim == 8
    assert demo.data.latent_stats_dir == "runs/demo/latents"
    mine = load_config_file(f"{TINY}:runs/mine/latents")
    validate(mine)
    assert mine.data.latents_dir == "runs/mine/latents"
    assert (mine.data.latent_files, mine.data.latent_stats_dir, mine.data.image_vae_workdir,
            mine.model.image_latent_dim, mine.model.audio_latent_dim) == ((), "", "", 0, 0)
    # everything else is the demo's model and schedule
    assert (mine.model.emb_dim, mine.train.num_steps) == (demo.model.emb_dim,
                                                          demo.train.num_steps)
