"""σ-VAE runs through the generic trainer: same losses on 1 and 8 devices; encoding a dataset to
normalised latent shards (round trip, statistics, per-process shards); the ``encode`` and ``eval``
commands on a trained run."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.cli.main import main
from latentlm_jax.data.array_record_source import LatentArrayRecordSource
from latentlm_jax.data.encode_latents import (
    denormalise,
    encode_dataset,
    encode_examples,
    load_stats,
)
from latentlm_jax.data.shapes_tones import ShapesTones
from latentlm_jax.train.checkpoint_io import save_run_config
from latentlm_jax.train.trainer import train
from latentlm_jax.vae.image import ImageVAE
from tests.helpers import LM_TINY, losses, tiny_vae_run_config


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("task", ["vae_image", "vae_audio"])
def test_same_losses_on_one_and_eight_devices(tmp_path, task):
    """The batch split over data=4 × fsdp=2 (parameters sharded too) computes the same steps."""
    one, eight = tiny_vae_run_config(task), tiny_vae_run_config(task, data=4, fsdp=2)
    train(one, str(tmp_path / "one"), devices=jax.devices()[:1])
    train(eight, str(tmp_path / "eight"))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=2e-5, err_msg=f"step {step}")
    assert a[6] < a[1]


def _tiny_image_vae():
    c = tiny_vae_run_config()
    return ImageVAE(c.vae, rngs=nnx.Rngs(0)), c


@pytest.mark.slow
def test_encode_dataset_round_trip_and_statistics(tmp_path):
    model, c = _tiny_image_vae()
    ds = ShapesTones(split="train", seed=0)
    stats = encode_dataset(model, "vae_image", ds, str(tmp_path), num_examples=20, batch_size=8,
                           seed=5)
    src = LatentArrayRecordSource(str(tmp_path / "latents-image-00000-of-00001.array_record"))
    assert len(src) == 20
    records = [src[i] for i in range(20)]
    z = np.stack([r["latents"] for r in records])
    assert z.shape == (20, 16, 8) and z.dtype == np.float32  # 4×4 grid, raster order
    assert [r["caption"] for r in records] == [ds[i]["image_caption"] for i in range(20)]
    # the stored μ, normalised per dimension with the statistics of the noisy z = μ + σ·ε over
    # the whole set: zero mean, and Var μ_n + (σ_std / std)² = 1 (docs/vae.md "Fresh noise")
    loaded = load_stats(str(tmp_path), "image")
    assert loaded["stored"] == "mean"
    flat = z.reshape(-1, 8)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.var(0) + (loaded["sigma_std"] / loaded["std"]) ** 2, 1.0,
                               rtol=1e-3)
    # de-normalising gives back the σ-VAE's μ
    assert loaded["sequence_length"] == 16 and loaded["latent_dim"] == 8 == stats["latent_dim"]
    images = np.stack([ds[i]["image"] for i in range(20)])
    mu = encode_examples(model, "image", images, jax.random.key(0), noisy=False)
    np.testing.assert_allclose(denormalise(z, loaded), mu, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_each_process_writes_its_own_shard(tmp_path):
    model, _ = _tiny_image_vae()
    ds = ShapesTones(split="train", seed=0)
    for p in range(2):
        encode_dataset(model, "vae_image", ds, str(tmp_path), num_examples=10, batch_size=4,
                       process_index=p, process_count=2)
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".array_record"))
    assert shards == [f"latents-image-0000{p}-of-00002.array_record" for p in range(2)]
    for p, name in enumerate(shards):
        src = LatentArrayRecordSource(str(tmp_path / name))
        assert [src[i]["index"] for i in range(len(src))] == list(range(p, 10, 2))
    assert os.listdir(tmp_path).count("stats-image.json") == 1


@pytest.mark.slow
def test_encode_and_eval_commands_on_a_trained_run(tmp_path, capsys):
    c = tiny_vae_run_config()
    run = str(tmp_path / "vae")
    save_run_config(c, run)  # as `latentlm train` does
    train(c, run, devices=jax.devices()[:1])
    out = str(tmp_path / "latents")
    assert main(["encode", "--vae-workdir", run, "--out", out, "--num-examples", "12",
                 "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 image latent sequences of 16 × 8 (checkpoint step 6)" in printed
    assert len(LatentArrayRecordSource(os.path.join(out, "latents-image-00000-of-00001"
                                                         ".array_record"))) == 12

    # Your own data through a manifest: images with captions; a text-only line and a missing
    # image are skipped and counted.
    from PIL import Image

    ds = ShapesTones(split="test", seed=0)
    lines = []
    for i in range(3):
        Image.fromarray(ds[i]["image"]).save(tmp_path / f"im{i}.png")
        lines.append(json.dumps({"image": f"im{i}.png", "text": f"caption {i}"}))
    lines += [json.dumps({"text": "only text"}), json.dumps({"image": "nope.png", "text": "x"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    mine = str(tmp_path / "mine")
    assert main(["encode", "--vae-workdir", run, "--config", LM_TINY,
                 "--config.data.source=manifest", f"--config.data.manifest={tmp_path}/m.jsonl",
                 "--out", mine]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 image latent sequences" in printed
    assert "not encoded: 1 example without image" in printed  # the text-only line
    assert "skipped 1 (missing_file)" in printed
    src = LatentArrayRecordSource(os.path.join(mine, "latents-image-00000-of-00001.array_record"))
    assert [src[i]["caption"] for i in range(3)] == ["caption 0", "caption 1", "caption 2"]
    assert main(["encode", "--vae-workdir", run, "--config", LM_TINY, "--out",
                 str(tmp_path / "bad")]) == 2
    assert "`latentlm encode` reads media" in capsys.readouterr().err

    assert main(["eval", "--workdir", run, "--examples", "16"]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(run, "eval", "vae_eval.json")) as f:
        result = json.load(f)
    assert result["step"] == 6 and result["task"] == "vae_image" and result["kind"] == "sigma"
    assert [r["noise_scale"] for r in result["rows"]] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert len(result["mu_std_per_dim"]) == 8
    # row 0 is decode(μ): the same PSNR the trainer's eval computes
    from latentlm_jax.train.checkpoint_io import load_model
    from latentlm_jax.vae import samples
    from latentlm_jax.vae.task import load_test_examples, reconstruct

    model, config, _ = load_model(run)
    images = np.stack([e["image"] for e in load_test_examples(config, 16)])
    recon = samples.to_uint8(reconstruct(model, samples.from_uint8(images)))
    assert result["rows"][0]["psnr"] == pytest.approx(samples.psnr(images, recon), abs=1e-6)
    assert f"{result['rows'][0]['psnr']:.4g}" in printed

    # bad requests: one line, exit code 2
    assert main(["eval", "--workdir", str(tmp_path / "missing")]) == 2
    assert main(["eval", "--workdir", run, "--examples", "0"]) == 2
    assert "--examples must be positive" in capsys.readouterr().err
