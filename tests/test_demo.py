"""``latentlm demo``: prompts, score bookkeeping, stage reuse rules, the codec's batched path, and
(slow) the whole --fast run end to end: report written, scores recomputable from the saved
samples, a second run reuses every stage, an interrupted training stage resumes from its
checkpoint; and a second --fast demo SIGKILLed in a stage finishes, when re-run, with the first
one's scores and samples (CI: one stage, drawn by the date, or ``LATENTLM_KILL_STAGE=k``; the full
run, ``LATENTLM_FULL_FAULTS=1``: each of the six stages in turn)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from flax import nnx

from latentlm_jax.config.loading import ConfigError, apply_overrides, load_config_file
from latentlm_jax.config.sweep import flatten
from latentlm_jax.data import scoring
from latentlm_jax.data.shapes_tones import (
    HELD_OUT_COMBINATIONS,
    ShapesTones,
    all_combinations,
    image_caption,
    is_held_out,
)
from latentlm_jax.demo import generation, markers, pipeline, stages
from latentlm_jax.demo.results import format_value
from latentlm_jax.generate.codecs import MediaCodec
from latentlm_jax.modality import AUDIO, IMAGE, MODALITY_NAMES
from latentlm_jax.vae.audio import AudioVAE
from latentlm_jax.vae.image import ImageVAE
from tests.helpers import (
    COMPILED,
    FULL_FAULTS,
    drawn_today,
    latentlm_command,
    one_device_env,
    read_text,
    start_logged,
    wait_for_text,
)

FULL = str(pipeline.configs_dir() / "demo.py")
FAST = str(pipeline.configs_dir() / "demo_fast.py")


def _caption(combo):
    size, color, shape, position = combo
    return image_caption(color=color, shape=shape, size=size, position=position)


# ------------------------------------------------------------------------------ prompts & scores
def test_t2i_prompts_cover_all_combinations_with_held_out_spread():
    prompts = generation.t2i_prompts(180, seed=3)
    assert sorted(p for p, _ in prompts) == sorted(_caption(c) for c in all_combinations())
    assert [p for p, h in prompts if h] != []
    for i, (p, held) in enumerate(prompts):
        attrs = scoring.parse_image_caption(p)
        assert held == is_held_out(attrs)
        assert held == (i % 10 == 0)  # the 18 held-out ones sit at every 10th place
    assert sum(h for _, h in prompts) == len(HELD_OUT_COMBINATIONS)
    # a short list still holds a held-out prompt; a longer one cycles; the seed shuffles
    assert sum(h for _, h in generation.t2i_prompts(10, seed=3)) == 1
    assert generation.t2i_prompts(185, seed=3)[180:] == prompts[:5]
    assert generation.t2i_prompts(180, seed=4) != prompts


def test_summarise_counts_the_records():
    rng = np.random.default_rng(0)
    t2i = [{"correct": bool(rng.random() < 0.6), "held_out": i % 10 == 0,
            "attributes": {a: bool(rng.random() < 0.8) for a in scoring.ATTRIBUTES}}
           for i in range(37)]
    i2t = [{"correct": bool(rng.random() < 0.5)} for _ in range(11)]
    t2a = [{"correct": bool(rng.random() < 0.5), "count": bool(rng.random() < 0.7)}
           for _ in range(13)]
    scores = generation.summarise({"text_to_image": t2i, "image_to_text": i2t,
                               "text_to_audio": t2a, "audio_recon": i2t})
    assert list(scores)[:3] == ["text→image", "image→text", "text→audio"]
    assert "audio→text" not in scores
    assert scores["text→image"] == {"accuracy": np.mean([r["correct"] for r in t2i]), "n": 37}
    held = [r["correct"] for r in t2i if r["held_out"]]
    assert scores["text→image, held-out combinations"]["accuracy"] == np.mean(held)
    assert scores["text→image, seen combinations"]["n"] == 37 - len(held)
    assert scores["text→image: shape"]["accuracy"] == np.mean(
        [r["attributes"]["shape"] for r in t2i])
    assert scores["text→audio: note count"]["accuracy"] == np.mean([r["count"] for r in t2a])
    assert scores["audio σ-VAE reconstruction"]["n"] == 11


# ------------------------------------------------------------------------------ stage rules
def test_markers_match_only_their_key(tmp_path):
    d = str(tmp_path / "stage")
    assert not markers.marker_matches(d, "k1")
    markers.write_marker(d, {"key": "k1", "n": 3})
    assert markers.marker_matches(d, "k1") and not markers.marker_matches(d, "k2")
    assert markers.read_marker(d) == {"key": "k1", "n": 3}
    markers.clear_marker(d)
    assert markers.read_marker(d) is None
    assert markers.fingerprint({"a": 1, "b": [1, 2]}) == markers.fingerprint({"b": [1, 2], "a": 1})
    assert markers.fingerprint({"a": 1}) != markers.fingerprint({"a": 2})


def test_a_workdir_trained_with_other_settings_is_refused(tmp_path):
    from latentlm_jax.train.checkpoint_io import save_run_config

    cfg = load_config_file(str(pipeline.configs_dir() / "latentlm_tiny.py"))
    save_run_config(cfg, str(tmp_path))
    moved = load_config_file(str(pipeline.configs_dir() / "latentlm_tiny.py"))
    moved.data.latent_files = ("/elsewhere/a.array_record",)  # paths may change: accepted
    stages.check_same_config(moved, str(tmp_path), "LatentLM")
    moved.train.num_steps = 7
    with pytest.raises(ConfigError, match=r"train\.num_steps: 1800 → 7"):
        stages.check_same_config(moved, str(tmp_path), "LatentLM")


def test_a_workdir_from_before_a_new_config_field_is_accepted_at_its_default(tmp_path):
    """A run saved before a field existed resumes while the field keeps its default; a
    non-default value of the new field is a difference."""
    cfg = load_config_file(str(pipeline.configs_dir() / "latentlm_tiny.py"))
    saved = stages.config_json(cfg)
    del saved["train"]["ema_decay"]  # as if train.ema_decay had been added after this run
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again = load_config_file(str(pipeline.configs_dir() / "latentlm_tiny.py"))
    again.train.ema_decay = 0.0  # the base default
    stages.check_same_config(again, str(tmp_path), "LatentLM")
    again.train.ema_decay = 0.5
    with pytest.raises(ConfigError, match=r"train\.ema_decay: '\(absent\)' → 0\.5"):
        stages.check_same_config(again, str(tmp_path), "LatentLM")


def test_stage_configs_pass_the_seed_and_the_vae_dims(tmp_path):
    c = load_config_file(FAST)
    c.seed = 11
    pipeline.check_demo_config(c)
    cfgs = pipeline.stage_configs(c, str(tmp_path))
    assert all(cfg.seed == 11 and cfg.data.seed == 11 for cfg in cfgs.values())
    lm = cfgs["lm"]
    assert lm.model.image_latent_dim == c.vae_image.vae.image.latent_dim
    assert lm.model.audio_latent_dim == c.vae_audio.vae.audio.latent_dim
    assert lm.data.source == "latents"
    assert [os.path.basename(f) for f in lm.data.latent_files] == [
        "latents-image-00000-of-00001.array_record", "latents-audio-00000-of-00001.array_record"]
    assert lm.data.image_vae_workdir == str(tmp_path / "vae_image")
    # --fast only changes sizes: the full config has the same fields
    full = load_config_file(FULL)
    assert sorted(flatten(full.to_dict())) == sorted(flatten(c.to_dict()))
    c.generate.sampler = "euler"
    with pytest.raises(ConfigError, match="generate.sampler"):
        pipeline.check_demo_config(c)
    c.generate.sampler = "dpm++2m"
    # 20 head slots per 128-token row cannot hold one 25-latent audio span (the packer's budget)
    c.lm.model.diffusion.target_fraction = 0.15
    with pytest.raises(ConfigError, match=r"lm\.model\.diffusion\.target_fraction: 0\.15 gives "
                                          r"the diffusion head 20 slots .* set it to ≥ 0\.188"):
        pipeline.check_demo_config(c)


def _untrained_codec(modality: int) -> MediaCodec:
    """A MediaCodec around a freshly initialised σ-VAE of the demo's config and made-up stats."""
    name = MODALITY_NAMES[modality]
    cfg = load_config_file(str(pipeline.configs_dir() / f"vae_{name}_tiny.py"))
    codec = MediaCodec.__new__(MediaCodec)
    codec.modality, codec.name, codec.vae_config = modality, name, cfg
    codec.vae = (ImageVAE if modality == IMAGE else AudioVAE)(cfg.vae, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(modality)
    d = codec.grid()[-1]
    codec.stats = {"mean": rng.normal(size=d).astype(np.float32),
                   "std": rng.uniform(0.5, 2.0, d).astype(np.float32)}
    return codec


def test_codec_batched_path_matches_one_at_a_time():
    rng = np.random.default_rng(0)
    image = _untrained_codec(IMAGE)
    h, w, d = image.grid()
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    z, recon = image.reconstruct_batch(pixels)
    assert z.shape == (3, h * w, d) and recon.shape == (3, 32, 32, 3) and recon.dtype == np.uint8
    np.testing.assert_array_equal(image.encode_batch(pixels), z)
    np.testing.assert_array_equal(image.encode(pixels), z)
    imgs = image.decode_batch(list(z))
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8
    assert np.abs(imgs[1].astype(int) - image.decode(z[1]).astype(int)).max() <= 1
    with pytest.raises(ValueError, match=f"an image needs {h * w} latents"):
        image.decode_batch([z[0][:-1]])

    audio = _untrained_codec(AUDIO)
    frames, d = audio.grid()
    lats = [rng.normal(size=(n, d)).astype(np.float32) for n in (frames, 2, frames, 3)]
    waves = audio.decode_batch(lats, 16000)
    assert waves.shape == (4, 16000) and waves.dtype == np.float32
    assert np.abs(waves).max() <= 1.0
    for z, wave in zip(lats, waves, strict=True):
        one = audio.decode(z)  # decoded alone: its own length
        assert one.ndim == 1 and 0 < len(one) <= 16000
        np.testing.assert_allclose(wave[:len(one)], one, atol=1e-5)
        assert not wave[len(one):].any()  # zero-padded to num_samples
    assert audio.decode_batch(lats[1:2] + lats[3:]).shape == (2, len(audio.decode(lats[3])))
    assert audio.decode_batch(lats, 800).shape == (4, 800)  # cut


def _cli(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "latentlm_jax.cli.main", "demo", *args],
                          capture_output=True, text=True, env=env or one_device_env(),
                          timeout=timeout)


@pytest.mark.parametrize("args,fragment", [
    (["--fast", "--config", FAST], "--fast and --config are exclusive"),
    (["--fast", "--config.lm.model.num_heads=3"], "config.lm.model.num_heads"),
    (["--fast", "--config.nope=1"], "config.nope: unknown key"),
])
def test_bad_settings_fail_with_one_line(tmp_path, args, fragment):
    proc = _cli("--workdir", str(tmp_path / "w"), *args, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("latentlm:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


# ------------------------------------------------------------------------------ end to end
def _table_value(table: str, metric: str) -> str:
    for line in table.splitlines():
        if line.startswith(metric + "  "):
            return line[len(metric):].split()[0]
    raise AssertionError(f"{metric!r} not in the table:\n{table}")


# `latentlm demo --fast` shrunk further for the slow tests: a few steps per training stage (a
# checkpoint every 4, so that a kill can land between two), few encoded examples and samples. The
# tests' XLA flags compile fast but run slowly, so steps cost here what compiles cost a user.
SMALL = {"vae_image.train.num_steps": 12, "vae_image.train.warmup_steps": 2,
         "vae_image.checkpoint.every_steps": 4, "vae_audio.train.num_steps": 8,
         "vae_audio.train.warmup_steps": 2, "vae_audio.checkpoint.every_steps": 4,
         "lm.train.num_steps": 12, "lm.train.warmup_steps": 2, "lm.checkpoint.every_steps": 4,
         "encode.num_examples": 64, "generate.text_to_image": 4, "generate.image_to_text": 2,
         "generate.text_to_audio": 2, "generate.audio_to_text": 2, "generate.batch_size": 4,
         "generate.steps": 2}
SMALL_ARGS = ["--fast", *(f"--config.{k}={v}" for k, v in SMALL.items())]


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    """``latentlm demo --fast`` (``SMALL``) once, for the slow tests below, after an interrupted
    first attempt: the image σ-VAE stopped half-way (as if preempted). Its compiled programs go
    into a cache that the kill test's runs share, so they skip compiling them."""
    import jax

    from latentlm_jax.train.checkpoint_io import latest_step, save_run_config
    from latentlm_jax.train.trainer import train

    root = tmp_path_factory.mktemp("fast_demo")
    workdir = root / "demo"
    c = apply_overrides(load_config_file(FAST), [f"{k}={v}" for k, v in SMALL.items()])
    vae_cfg = pipeline.stage_configs(c, str(workdir))["vae_image"]
    half = vae_cfg.train.num_steps // 2
    save_run_config(vae_cfg, str(workdir / "vae_image"))
    train(vae_cfg, str(workdir / "vae_image"), stop_at=half, devices=jax.devices()[:1])
    assert latest_step(str(workdir / "vae_image")) == half
    env = dict(one_device_env(), PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=str(
        root / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    first = _cli(*SMALL_ARGS, "--workdir", str(workdir), env=env)
    return SimpleNamespace(workdir=workdir, config=c, half=half, run=first, env=env)


@pytest.mark.slow
def test_fast_demo_end_to_end_then_reused(fast_demo, tmp_path):
    workdir, c, half, first = fast_demo.workdir, fast_demo.config, fast_demo.half, fast_demo.run
    out = first.stdout
    assert first.returncode == 0, out[-3000:] + first.stderr[-3000:]
    for k in range(1, 7):
        assert f"[{k}/6]" in out
    assert f"Resuming from checkpoint at step {half}" in out  # stage 1 resumed, not restarted
    for label in ("encoding image", "encoding audio", "text→image", "image→text", "text→audio",
                  "audio→text"):
        assert re.search(rf"{label} \d+/\d+ \(.*ETA", out), label  # progress with an ETA
    report = workdir / "report"
    assert (report / "index.html").stat().st_size > 10_000
    assert (report / "report.md").exists()
    assert out.rstrip().splitlines()[-1].startswith("Report: ")
    assert str(report / "index.html") in out

    # The table's numbers come from the per-sample results, which come from the scorers.
    results = json.loads((workdir / "results.json").read_text())
    samples, scores = results["samples"], results["scores"]
    table = out[out.index("metric"):out.index("Report: ")]
    for task, name in generation.TASK_NAMES.items():
        flags = [r["correct"] for r in samples[task]]
        assert scores[name] == {"accuracy": sum(flags) / len(flags), "n": len(flags)}
        assert _table_value(table, name) == format_value(sum(flags) / len(flags), "accuracy")
    with np.load(workdir / "generate" / "samples.npz") as data:
        arrays = {k: data[k] for k in data.files}
    g = c.generate
    assert arrays["t2i_images"].shape == (g.text_to_image, 32, 32, 3)
    assert arrays["t2a_waves"].shape == (g.text_to_audio, 16000)
    held = [r for r in samples["text_to_image"] if r["held_out"]]
    assert held and scores["text→image, held-out combinations"]["n"] == len(held)
    for r, img in zip(samples["text_to_image"], arrays["t2i_images"], strict=True):
        s = scoring.score_image(img, r["prompt"])
        assert (s["correct"], s["predicted"]) == (r["correct"], r["predicted"])
    for r, wave in zip(samples["text_to_audio"], arrays["t2a_waves"], strict=True):
        assert scoring.score_audio(wave, r["prompt"])["correct"] == r["correct"]
    test = ShapesTones("test", c.seed)
    for task, key in (("image_to_text", "image_caption"), ("audio_to_text", "audio_caption")):
        for r in samples[task]:
            assert r["truth"] == test[r["index"]][key]
            assert r["correct"] == scoring.score_caption(r["generated"], r["truth"])
    np.testing.assert_array_equal(arrays["i2t_images"][1], test[1]["image"])

    # A second run reuses every stage: nothing is trained, encoded or generated again.
    mtimes = {p: p.stat().st_mtime for p in (workdir / "results.json",
                                             workdir / "generate" / "samples.npz",
                                             workdir / "latents" / "DONE")}
    second = _cli(*SMALL_ARGS, "--workdir", str(workdir))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out2 = second.stdout
    for k in range(1, 6):
        assert f"[{k}/6] reused" in out2
    assert "compiled the train step" not in out2 and "encoding image" not in out2
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert out2[out2.index("metric"):out2.index("Report: ")] == table

    # `latentlm generate` on the demo's LatentLM: PNG / WAV files the σ-VAEs decoded, captions.
    def gen(*args):
        env = one_device_env()
        return subprocess.run([sys.executable, "-m", "latentlm_jax.cli.main", "generate",
                               "--workdir", str(workdir / "lm"), "--steps", "3", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    from PIL import Image

    images = gen("--prompt", "a large red circle in the top left", "--modality", "image",
                 "--num-samples", "2", "--out", str(tmp_path / "gen_image"))
    assert images.returncode == 0, images.stderr[-2000:]
    pngs = sorted((tmp_path / "gen_image").glob("*.png"))
    assert len(pngs) == 2
    assert np.asarray(Image.open(pngs[0])).shape == (32, 32, 3)
    clips = gen("--prompt", "notes C4 E4", "--modality", "audio", "--num-samples", "1",
                "--out", str(tmp_path / "gen_audio"))
    assert clips.returncode == 0, clips.stderr[-2000:]
    import soundfile

    wavs = sorted((tmp_path / "gen_audio").glob("*.wav"))
    assert len(wavs) == 1
    wave, rate = soundfile.read(wavs[0])
    assert rate == 16000 and 0 < len(wave) <= 16000
    Image.fromarray(test[0]["image"]).save(tmp_path / "in.png")
    caption = gen("--modality", "text", "--image", str(tmp_path / "in.png"))
    assert caption.returncode == 0, caption.stderr[-2000:]
    # one line, the caption (a 12-step LM writes mostly spaces: quality is the scores' business)
    assert len(caption.stdout.splitlines()) == 1 and caption.stdout.endswith("\n")


# ------------------------------------------------------------------------------ a kill per stage
# Stage k prints "[k/6] <title>" when it starts and "[k/6] done|reused in ..." when it ends.
DEMO_STAGES = 6
TRAINING_STAGES = (1, 2, 4)  # the σ-VAEs and the LatentLM
ENCODE_STAGE = 3


def _demo_stages_to_kill() -> list[int]:
    """Every stage in the full run; in CI one, drawn by the date (a different stage from day
    to day, the same all day) unless LATENTLM_KILL_STAGE names it."""
    stages = tuple(str(k) for k in range(1, DEMO_STAGES + 1))
    if FULL_FAULTS:
        return [int(k) for k in stages]
    return [int(drawn_today(stages, "LATENTLM_KILL_STAGE"))]


@pytest.mark.slow
def test_demo_survives_a_kill_in_a_stage(fast_demo, tmp_path):
    """A second demo like ``fast_demo`` (no interrupted first attempt) is SIGKILLed in a stage,
    then re-run: it ends with the scores and per-sample records of ``fast_demo``, which was
    interrupted elsewhere (its image σ-VAE stopped half-way). Equal results from two runs cut at
    different places are what an uninterrupted run gives."""
    assert fast_demo.run.returncode == 0, fast_demo.run.stdout[-3000:]
    demo = latentlm_command("demo", *SMALL_ARGS, "--workdir", str(tmp_path / "killed"))
    rng = np.random.default_rng(3)
    killed_in = []
    for k in _demo_stages_to_kill():
        log = tmp_path / f"kill{k}.log"
        proc = start_logged(demo, log, fast_demo.env)
        header = f"[{k}/{DEMO_STAGES}] "
        assert wait_for_text(log, header, proc, timeout=900), read_text(log)[-3000:]
        if k in TRAINING_STAGES:  # into the training steps and their checkpoint writes
            assert wait_for_text(log, COMPILED, proc, timeout=900, after=header), \
                read_text(log)[-3000:]
            time.sleep(rng.uniform(0.0, 1.0))
        elif k == ENCODE_STAGE:  # between the image shard and the audio one
            assert wait_for_text(log, "wrote ", proc, timeout=900, after=header), \
                read_text(log)[-3000:]
        else:  # generating (a few s here), or writing the report (~2 s)
            time.sleep(rng.uniform(0.2, 1.5) if k < DEMO_STAGES else rng.uniform(0.05, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        text = read_text(log)
        started = re.findall(r"^\[(\d)/6\] (?!done|reused)", text, re.M)
        ended = re.findall(r"^\[(\d)/6\] (?:done|reused) in", text, re.M)
        running = [int(s) for s in started if s not in ended]
        assert running, f"the kill in stage {k} came after the demo ended:\n{text[-2000:]}"
        killed_in.append(running[-1])
    log = tmp_path / "final.log"
    proc = start_logged(demo, log, fast_demo.env)
    assert proc.wait(timeout=900) == 0, read_text(log)[-3000:]
    expected = json.loads(read_text(fast_demo.workdir / "results.json"))
    results = json.loads(read_text(tmp_path / "killed" / "results.json"))
    assert results["scores"] == expected["scores"]
    assert results["samples"] == expected["samples"]
    print(f"demo killed in stages {killed_in}")
    assert set(killed_in) == set(_demo_stages_to_kill())
