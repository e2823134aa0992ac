"""README "Train on your own data", end to end with the real commands on real PNG files: manifest →
σ-VAE (``latentlm train``, data.source=manifest) → ``eval`` → ``encode`` (latents.json) →
LatentLM (``configs/latentlm_tiny.py:DIR``, nothing else wired by hand) → ``generate
--prompts-file``. Tiny settings, a few steps per stage; each command runs as its own process on
one CPU device, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from latentlm_jax.data.photo_like import write_manifest
from tests.helpers import ROOT, latentlm_command, one_device_env

TINY_VAE = ["--config.vae.image.channels=8", "--config.vae.image.channel_mult=(1, 2)",
            "--config.vae.audio.channels=8", "--config.vae.eval_examples=8"]
TINY_LM = ["--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.mlp_dim=64",
           "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
           "--config.model.head_dim=8"]
SHORT = ["--config.train.global_batch_size=8", "--config.train.warmup_steps=1",
         "--config.train.log_every=1", "--config.train.eval_every=0",
         "--config.metrics.peak_tflops_per_device=1.0"]


def latentlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(latentlm_command(*args), cwd=ROOT, capture_output=True, text=True,
                          env=one_device_env(), timeout=300)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_manifest_to_generated_files(tmp_path):
    data = tmp_path / "data"
    manifest = write_manifest(str(data), images=24, audio=8, seed=1)  # lines 1–24, 25–32
    with open(manifest, "a") as f:  # line 33: an image that is not there
        f.write(json.dumps({"text": "lost", "image": "images/lost.png"}) + "\n")
    vae, vae_audio, latents, lm, out = (str(tmp_path / n) for n in (
        "vae_image", "vae_audio", "latents", "lm", "samples"))

    # 1. σ-VAEs on the manifest (the audio one is the README's "same way, same --out")
    for config, workdir in (("vae_image_tiny", vae), ("vae_audio_tiny", vae_audio)):
        ok(latentlm("train", "--config", f"configs/{config}.py", "--workdir", workdir,
                    "--config.data.source=manifest", f"--config.data.manifest={manifest}",
                    "--config.train.num_steps=4", "--config.checkpoint.every_steps=4",
                    *TINY_VAE, *SHORT))
    # 2. quality
    ok(latentlm("eval", "--workdir", vae, "--examples", "8"))
    # 3. encode both into one folder: the σ-VAE runs' own manifest; the missing image skipped and
    # counted; lines of the other modality are not bad input
    printed = ok(latentlm("encode", "--vae-workdir", vae, "--out", latents, "--batch-size", "16"))
    assert "wrote 24 image latent sequences of 16 × 8 (checkpoint step 4)" in printed
    assert "not encoded: 8 examples without image" in printed
    assert "skipped 1 (missing_file)" in printed
    printed = ok(latentlm("encode", "--vae-workdir", vae_audio, "--out", latents))
    assert "wrote 8 audio latent sequences of 25 × 16 (checkpoint step 4)" in printed
    assert "not encoded: 25 examples without audio" in printed and "skipped" not in printed
    with open(os.path.join(latents, "latents.json")) as f:
        entries = json.load(f)["modalities"]
    entry = entries["image"]
    assert (entry["latent_dim"], entry["sequence_length"], entry["count"]) == (8, 16, 24)
    assert (entry["vae_workdir"], entry["vae_step"]) == (vae, 4)
    assert entry["caption_field"] == "text" and entry["skipped"] == {"missing_file": 1}
    assert (entries["audio"]["latent_dim"], entries["audio"]["count"]) == (16, 8)
    # ... and under data.bad_input=error the missing image stops it, named with its line
    err = one_line_error(latentlm("encode", "--vae-workdir", vae, "--out", str(tmp_path / "x"),
                                  "--config.data.bad_input=error"))
    assert f"bad input (missing_file) at manifest {manifest} line 33" in err
    assert str(data / "images" / "lost.png") in err and "Traceback" not in err

    # 4. the LatentLM: dims, shards, statistics and σ-VAE from the folder
    lm_args = ["train", "--config", f"configs/latentlm_tiny.py:{latents}", "--workdir", lm,
               *TINY_LM, *SHORT, "--config.train.num_steps=3", "--config.checkpoint.every_steps=3"]
    err = one_line_error(latentlm(*lm_args, "--config.model.image_latent_dim=5"))
    assert err.startswith("latentlm: error: config.model.image_latent_dim: 5 disagrees") \
        and "dim 8" in err
    assert not os.path.exists(lm)  # refused before the workdir was made
    ok(latentlm(*lm_args))
    with open(os.path.join(lm, "config.json")) as f:
        saved = json.load(f)
    assert (saved["model"]["image_latent_dim"], saved["model"]["audio_latent_dim"]) == (8, 16)
    assert saved["data"]["latent_files"] == [
        os.path.join(latents, f"latents-{m}-00000-of-00001.array_record")
        for m in ("image", "audio")]
    assert (saved["data"]["image_vae_workdir"], saved["data"]["audio_vae_workdir"],
            saved["data"]["latent_stats_dir"]) == (vae, vae_audio, latents)

    # 5. generate in bulk from the LatentLM's workdir alone
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in (
        {"prompt": "a red circle on the left, day scene", "count": 2},
        {"prompt": "notes C4 G4", "modality": "audio"},
        {"prompt": "a blue box on the right, snow scene", "seed": 3})) + "\n")
    printed = ok(latentlm("generate", "--workdir", lm, "--prompts-file", str(prompts),
                          "--modality", "image", "--out", out, "--steps", "2",
                          "--batch-size", "2"))
    assert "wrote 4 files for 3 prompts" in printed
    with open(os.path.join(out, "manifest.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    assert [(x.get("image") or x.get("audio"), x["prompt_index"], x["seed"], x["step"])
            for x in lines] == [("0000_00.png", 0, 0, 3), ("0000_01.png", 0, 0, 3),
                                ("0001_00.wav", 1, 0, 3), ("0002_00.png", 2, 3, 3)]
    for x in lines:
        if "image" in x:
            img = np.asarray(Image.open(os.path.join(out, x["image"])))
            assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    wave, rate = sf.read(os.path.join(out, "0001_00.wav"))
    assert rate == 16000 and wave.shape == (16000,) and 1 <= lines[2]["latents"] <= 25
