"""Evaluating σ-VAEs on your own data: the trainer's eval on a manifest run, ``latentlm eval
--config`` on a held-out manifest (PSNR against a direct computation, the grid of originals above
reconstructions, skip counts), ``latentlm reconstruct`` files, and the audio figures (SNR,
log-spectral distance) with their WAVs. The built-in scorers are used only on built-in data."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import soundfile
from flax import nnx
from PIL import Image

from latentlm_jax.cli.main import main
from latentlm_jax.config.base import base_config
from latentlm_jax.data.bad_input import BadInputPolicy
from latentlm_jax.data.media import load_image
from latentlm_jax.train.checkpoint_io import load_model, save_run_config
from latentlm_jax.train.trainer import train
from latentlm_jax.vae import samples
from latentlm_jax.vae.diagnostics import NOISE_SCALES, audio_diagnostics
from latentlm_jax.vae.evaluation import (
    reconstruct,
    reconstruct_examples,
    write_pairs,
    write_samples,
)
from latentlm_jax.vae.sources import first_usable, open_examples
from tests.helpers import ROOT

LM_TINY = os.path.join(ROOT, "configs", "lm_tiny.py")
COLOURS = [(0, 128, 128), (200, 30, 90), (250, 220, 0), (20, 20, 160), (90, 160, 40)]


def write_manifest(path, lines: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


def image_run_config(manifest: str):
    c = base_config()
    c.task = "vae_image"
    c.vae.image.channels, c.vae.image.channel_mult = 8, (1, 2)
    c.vae.eval_examples = 3
    c.data.source, c.data.manifest = "manifest", manifest
    c.train.global_batch_size, c.train.num_steps, c.train.warmup_steps = 4, 3, 1
    c.train.log_every, c.train.eval_every, c.checkpoint.every_steps = 3, 3, 3
    c.metrics.peak_tflops_per_device = 1.0
    c.mesh.ici.data = 1
    return c


@pytest.mark.slow  # trains a tiny σ-VAE and runs eval + reconstruct (~30-60 s)
def test_eval_and_reconstruct_on_a_manifest(tmp_path, capsys):
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (48, 40), colour).save(tmp_path / f"c{i}.png")
    train_manifest = write_manifest(tmp_path / "train.jsonl",
                                    [{"image": f"c{i}.png", "text": "x"} for i in range(4)]
                                    + [{"text": "captions only"}])
    run = str(tmp_path / "run")
    c = image_run_config(train_manifest)
    save_run_config(c, run)
    train(c, run, devices=jax.devices()[:1])
    # the trainer's eval: the run's own first examples, PSNR only (no built-in scorer)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "eval/psnr" in r]
    assert len(evals) == 1 and "eval/recon_correct" not in evals[0]
    grid = Image.open(os.path.join(run, "samples", "step_3", "reconstructions.png"))
    assert grid.size == (3 * 34 + 2, 2 * 34 + 2)

    # held-out data: a line without an image, a missing file
    held_out = write_manifest(tmp_path / "held_out.jsonl", [
        {"image": "c4.png"}, {"audio": "x.wav"}, {"image": "c1.png"}, {"image": "gone.png"},
        {"image": "c2.png"}])
    assert main(["eval", "--workdir", run, "--config", LM_TINY, "--examples", "10",
                 "--config.data.source=manifest", f"--config.data.manifest={held_out}"]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(run, "eval", "vae_eval.json")) as f:
        result = json.load(f)
    assert result["data"] == f"manifest {held_out}" and result["examples"] == 3
    assert result["skipped"] == {"data/skipped/missing_file": 1, "data/skipped/no_image": 1}
    assert [r["noise_scale"] for r in result["rows"]] == list(NOISE_SCALES)
    assert set(result["rows"][0]) == {"noise_scale", "psnr"}  # no scorer on user data
    model, _, _ = load_model(run)
    originals = np.stack([load_image(str(tmp_path / f"c{i}.png"), 32) for i in (4, 1, 2)])
    recon = samples.to_uint8(reconstruct(model, samples.from_uint8(originals)))
    assert result["rows"][0]["psnr"] == pytest.approx(samples.psnr(originals, recon), abs=1e-6)
    assert "psnr" in printed and f"{result['rows'][0]['psnr']:.4g}" in printed
    assert f"3 examples of manifest {held_out}" in printed
    assert "skipped 1 (missing_file), 1 (no_image)" in printed
    grid = np.asarray(Image.open(os.path.join(run, "eval", "reconstructions.png")))
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    np.testing.assert_array_equal(grid[2:34, 2:34], originals[0])  # originals on top
    np.testing.assert_array_equal(grid[36:68, 2:34], recon[0])  # reconstructions below

    # reconstruct: the run's own config with overrides; files named by source index
    out = str(tmp_path / "recon")
    assert main(["reconstruct", "--workdir", run, "--out", out, "--examples", "2",
                 f"--config.data.manifest={held_out}"]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["00000_original.png", "00000_recon.png",
                                       "00002_original.png", "00002_recon.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(f"{out}/00002_original.png")),
                                  originals[1])
    np.testing.assert_array_equal(np.asarray(Image.open(f"{out}/00002_recon.png")), recon[1])
    assert "wrote 2 image reconstructions" in printed and "psnr=" in printed
    assert "skipped 1 (no_image)" in printed

    # the σ-VAE's input size must match the data's: one line, exit 2
    assert main(["eval", "--workdir", run, "--config.data.image_resolution=64"]) == 2
    assert "data.image_resolution: 64, but the σ-VAE reads 32" in capsys.readouterr().err


@pytest.mark.slow  # builds and compiles an audio σ-VAE (~20 s)
def test_audio_figures_and_files_on_your_own_clips(tmp_path):
    from latentlm_jax.vae.audio import AudioVAE

    rate = 16000
    t = np.arange(rate) / rate
    for i in range(3):
        soundfile.write(tmp_path / f"t{i}.wav", 0.4 * np.sin(2 * np.pi * (330 + 110 * i) * t),
                        rate)
    c = base_config()
    c.task = "vae_audio"
    c.vae.audio.channels, c.vae.audio.channel_mult = 4, (1, 2)
    c.data.source = "manifest"
    c.data.manifest = write_manifest(tmp_path / "m.jsonl", [
        {"audio": "t0.wav"}, {"image": "x.png"}, {"audio": "t1.wav"}, {"audio": "t2.wav"}])
    policy = BadInputPolicy("skip")
    examples = first_usable(open_examples("vae_audio", c, c.vae, "test"), 10, policy)
    assert [i for i, _ in examples] == [0, 2, 3]
    assert policy.counts() == {"data/skipped/no_audio": 1}
    model = AudioVAE(c.vae, rngs=nnx.Rngs(0))
    rec = reconstruct_examples(model, "audio", examples, builtin=False)
    waves = np.stack([soundfile.read(tmp_path / f"t{i}.wav", dtype="float32")[0]
                      for i in range(3)])
    np.testing.assert_array_equal(rec.originals, waves)
    assert set(rec.metrics) == {"snr_db", "lsd_db"}
    assert rec.metrics["snr_db"] == pytest.approx(samples.snr_db(waves, rec.recons))
    assert rec.metrics["lsd_db"] == pytest.approx(
        samples.log_spectral_distance(waves, rec.recons))
    assert rec.metrics["lsd_db"] > samples.log_spectral_distance(waves, waves) == 0.0
    diag = audio_diagnostics(model, [e for _, e in examples], jax.random.key(0), builtin=False)
    assert set(diag["rows"][0]) == {"noise_scale", "snr_db", "lsd_db"}
    assert diag["rows"][0]["snr_db"] == pytest.approx(rec.metrics["snr_db"], abs=1e-3)
    assert len(write_samples(str(tmp_path / "s"), rec, rate)) == 6
    paths = write_pairs(str(tmp_path / "p"), rec, rate)
    assert [os.path.basename(p) for p in paths[:2]] == ["00000_original.wav", "00000_recon.wav"]
    back, sr = soundfile.read(paths[1], dtype="float32")
    assert sr == rate and np.abs(back - np.clip(rec.recons[0], -1, 1)).max() < 1e-4
