"""``latentlm demo``: the whole LatentLM recipe on the built-in data, in six resumable stages.

1. train the image σ-VAE            → WORKDIR/vae_image
2. train the audio σ-VAE            → WORKDIR/vae_audio
3. encode train examples to latents → WORKDIR/latents (ArrayRecord + stats; DONE marker)
4. train the LatentLM on the mix    → WORKDIR/lm
5. generate for test-split prompts and score every sample
                                    → WORKDIR/results.json, WORKDIR/generate (samples.npz; DONE)
6. write the report                 → WORKDIR/report/index.html, report.md

The demo's settings are one ConfigDict, the config file ``configs/demo.py`` (found with
:func:`configs_dir`), holding the three training configs (``vae_image``, ``vae_audio``, ``lm``:
loaded from their files in ``configs/``) and the encode / generate settings, so
``--config.lm.train.num_steps=300`` or ``--config.generate.steps=30`` override anything, and
``--fast`` is just another config file (``configs/demo_fast.py``). :func:`check_demo_config`
validates it. ``seed`` is passed to every stage (``seed`` and ``data.seed`` of each training
config, the encode noise, the test split and the samplers).

The stages live in ``demo/stages.py`` (training, encoding) and ``demo/generation.py`` (generation
and scoring); the report in ``demo/report.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths as path_layer
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.demo.generation import (
    A2T,
    I2T,
    T2A,
    T2I,
    TASK_NAMES,
    generate_stage,
    load_results,
)
from latentlm_jax.demo.markers import read_marker
from latentlm_jax.demo.report import write_report
from latentlm_jax.demo.results import (
    AudioSample,
    CaptionSample,
    DemoResults,
    ImageSample,
    StageSummary,
    score_table_text,
)
from latentlm_jax.demo.stages import StageError, encode_stage, latent_files, train_stage
from latentlm_jax.diffusion.samplers import METHODS
from latentlm_jax.generate.codecs import check_understanding_input
from latentlm_jax.modality import (
    AUDIO,
    IMAGE,
    LATENT_DIM_FIELDS,
    LATENT_MODALITIES,
    MODALITY_NAMES,
    VAE_TASKS,
)
from latentlm_jax.train.metrics import format_duration
from latentlm_jax.vae.config import audio_latent_shape, image_latent_shape

NUM_STAGES = 6
# The demo config's three training configs, each under its task's name: "vae_image", "vae_audio",
# "lm" (also the names of their workdirs).
TRAINING = (*VAE_TASKS.values(), "lm")
TARGETS = {TASK_NAMES[T2I]: 0.8, TASK_NAMES[I2T]: 0.9, TASK_NAMES[T2A]: 0.8,
           TASK_NAMES[A2T]: 0.9}
STAGE_CURVES = {
    "vae_image": ["loss", "recon", "kl_or_mu", "eval/psnr", "eval/recon_correct"],
    "vae_audio": ["loss", "recon", "stft", "eval/snr_db", "eval/recon_correct"],
    "lm": ["loss", "ce", "diff/image", "diff/audio"],
}
STAGE_TITLES = {"vae_image": "image σ-VAE", "vae_audio": "audio σ-VAE", "lm": "LatentLM"}
LATENT_SHAPES = {IMAGE: image_latent_shape, AUDIO: audio_latent_shape}  # config.vae → grid


def configs_dir() -> Path:
    """The repository's ``configs/`` (the package is installed in editable mode), else ./configs."""
    here = Path(__file__).resolve().parents[2] / "configs"
    return here if here.is_dir() else Path("configs")


def check_demo_config(c: mlc.ConfigDict) -> None:
    """Validates the three training configs and the demo's own fields (one-line errors)."""
    for name in TRAINING:
        if c[name].task != name:
            raise ConfigError(f"{name}.task", f"must be {name!r}, got {c[name].task!r}")
        try:
            validate(c[name])
        except ConfigError as e:
            raise ConfigError(f"{name}.{e.field}" if e.field else name, e.problem) from e
    if c.encode.num_examples <= 0 or c.encode.batch_size <= 0:
        raise ConfigError("encode.num_examples", "encode.num_examples and batch_size must be > 0")
    g = c.generate
    for field in ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text"):
        if g[field] < 0 or g[field] > 10_000:
            raise ConfigError(f"generate.{field}", f"must be in [0, 10000], got {g[field]}")
    if g.batch_size <= 0 or g.steps <= 0 or g.max_text_tokens <= 0:
        raise ConfigError("generate.batch_size",
                          "batch_size, steps and max_text_tokens must be > 0")
    check_understanding_input(g.understanding_input, "generate.understanding_input")
    if g.sampler not in METHODS:
        raise ConfigError("generate.sampler", f"must be one of {', '.join(METHODS)}; "
                                              f"got {g.sampler!r}")
    if c.seed < 0:
        raise ConfigError("seed", f"must be ≥ 0, got {c.seed}")
    _check_head_slots(c)


def _check_head_slots(c: mlc.ConfigDict) -> None:
    """One image or audio span must fit the LatentLM's diffusion-head slots per row (the
    pipeline's target budget, data/target_capacity.py): checked here from the σ-VAE configs,
    before any stage runs, as `latentlm train` checks it from the encoded latents."""
    from latentlm_jax.data.target_capacity import check_span_budget
    from latentlm_jax.modality import AUDIO, IMAGE
    from latentlm_jax.vae.config import audio_latent_shape, image_latent_shape

    h, w, _ = image_latent_shape(c.vae_image.vae)
    frames, _ = audio_latent_shape(c.vae_audio.vae)
    lm = c.lm.copy_and_resolve_references()
    lm.model.image_latent_dim = lm.model.image_latent_dim or 1  # the demo fills the dims later
    lm.model.audio_latent_dim = lm.model.audio_latent_dim or 1
    try:
        check_span_budget(lm, {IMAGE: h * w, AUDIO: frames})
    except ConfigError as e:
        raise ConfigError(f"lm.{e.field}", e.problem) from e


def stage_configs(c: mlc.ConfigDict, workdir: str) -> dict[str, mlc.ConfigDict]:
    """The three training configs as the stages run them: the demo's seed everywhere, the
    LatentLM's latent dims from the σ-VAEs, its data from the encoded latents."""
    out = {}
    for name in TRAINING:
        cfg = mlc.ConfigDict(c[name].to_dict())
        cfg.seed = c.seed
        cfg.data.seed = c.seed
        out[name] = cfg
    lm = out["lm"]
    for m in LATENT_MODALITIES:
        lm.model[LATENT_DIM_FIELDS[m]] = LATENT_SHAPES[m](out[VAE_TASKS[m]].vae)[-1]
    lm.data.source = "latents"
    lm.data.latent_files = latent_files(os.path.join(workdir, "latents"))
    lm.data.latent_stats_dir = path_layer.as_str(os.path.join(workdir, "latents"))
    for m in LATENT_MODALITIES:
        lm.data[f"{MODALITY_NAMES[m]}_vae_workdir"] = path_layer.as_str(
            os.path.join(workdir, VAE_TASKS[m]))
    return out


# ---------------------------------------------------------------------------------- timings
def _times_path(workdir: str) -> str:
    return os.path.join(workdir, "stage_times.json")


def _load_times(workdir: str) -> dict[str, float]:
    try:
        text = path_layer.read_text(_times_path(workdir))
        return {k: float(v) for k, v in json.loads(text).items()}
    except (OSError, ValueError):
        return {}


def _save_times(workdir: str, times: dict[str, float]) -> None:
    path_layer.write_text(_times_path(workdir), json.dumps(times, indent=1))


# ---------------------------------------------------------------------------------- running
@dataclass
class DemoOutcome:
    """What a demo run did: per stage whether it was reused, and where the report is."""

    reused: dict[str, bool]
    report: dict[str, str]
    scores: dict[str, dict[str, float | int]]
    table: str
    seconds: float


def run_demo(c: mlc.ConfigDict, workdir: str, say: Callable[[str], None] = print,
             devices: list | None = None) -> DemoOutcome:
    """Runs (or resumes) the six stages in ``workdir``; see the module docstring."""
    check_demo_config(c)
    t_run = time.perf_counter()
    path_layer.makedirs(workdir)
    cfgs = stage_configs(c, workdir)
    paths = {name: os.path.join(workdir, name) for name in TRAINING}
    latents_dir = os.path.join(workdir, "latents")
    gen_dir = os.path.join(workdir, "generate")
    results_path = os.path.join(workdir, "results.json")
    report_dir = os.path.join(workdir, "report")
    times = _load_times(workdir)
    reused: dict[str, bool] = {}

    def stage(k: int, name: str, title: str, fn: Callable[[], bool]) -> None:
        say(f"\n[{k}/{NUM_STAGES}] {title}")
        t0 = time.perf_counter()
        reused[name] = fn()
        if not reused[name]:
            times[name] = time.perf_counter() - t0
            _save_times(workdir, times)
        say(f"[{k}/{NUM_STAGES}] {'reused' if reused[name] else 'done'} in "
            f"{format_duration(time.perf_counter() - t0)}")

    for k, name in ((1, "vae_image"), (2, "vae_audio")):
        cfg = cfgs[name]
        stage(k, name, f"training the {STAGE_TITLES[name]} ({cfg.train.num_steps} steps) → "
                       f"{paths[name]}",
              lambda cfg=cfg, name=name: train_stage(cfg, paths[name], STAGE_TITLES[name], say,
                                                     devices))
    e = c.encode
    stage(3, "encode", f"encoding {e.num_examples} train examples per modality → {latents_dir}",
          lambda: encode_stage({MODALITY_NAMES[m]: paths[VAE_TASKS[m]] for m in LATENT_MODALITIES},
                               latents_dir, num_examples=e.num_examples,
                               batch_size=e.batch_size, seed=c.seed, say=say))
    lm = cfgs["lm"]
    stage(4, "lm", f"training the LatentLM ({lm.train.num_steps} steps, tasks "
                   f"{lm.data.task_weights or 'all'}) → {paths['lm']}",
          lambda: _lm_stage(lm, paths["lm"], latents_dir, say, devices))
    g = c.generate
    stage(5, "generate", f"generating and scoring on the test split ({g.text_to_image} "
                         f"text→image, {g.image_to_text} image→text, {g.text_to_audio} "
                         f"text→audio, {g.audio_to_text} audio→text)",
          lambda: generate_stage(paths["lm"], gen_dir, results_path, g, c.seed, TARGETS, say))

    say(f"\n[{NUM_STAGES}/{NUM_STAGES}] writing the report → {report_dir}")
    results, arrays = load_results(results_path, gen_dir)
    total = sum(times.get(n, 0.0) for n in ("vae_image", "vae_audio", "encode", "lm", "generate"))
    demo = build_results(results, arrays, cfgs, paths, times, reused, c)
    demo.total_seconds = total
    t0 = time.perf_counter()
    report = write_report(demo, report_dir, max_audio_players=c.report.max_audio_players)
    table = score_table_text(demo)
    seconds = time.perf_counter() - t_run
    say(f"[{NUM_STAGES}/{NUM_STAGES}] done in {format_duration(time.perf_counter() - t0)}")
    say(f"\nScores on the test split (LatentLM step {results['lm_step']}; stages took "
        f"{format_duration(demo.total_seconds)} in all, this run {format_duration(seconds)}):\n")
    say(table)
    say(f"\nReport: {path_layer.as_str(report['html'])}  "
        f"(and {path_layer.as_str(report['markdown'])})")
    return DemoOutcome(reused, report, results["scores"], table, seconds)


def _lm_stage(cfg: mlc.ConfigDict, workdir: str, latents_dir: str, say, devices) -> bool:
    """Train the LatentLM, refusing to continue one that was trained on other latents."""
    marker = read_marker(latents_dir) or {}
    inputs = os.path.join(workdir, "latents_key.txt")
    if path_layer.exists(inputs):
        if path_layer.read_text(inputs).strip() != marker.get("key"):
            raise StageError(
                f"{workdir} holds a LatentLM trained on other latents (the σ-VAEs or the "
                f"encode settings changed); use a fresh --workdir, or delete {workdir}")
    else:
        path_layer.write_text(inputs, str(marker.get("key", "")))
    return train_stage(cfg, workdir, STAGE_TITLES["lm"], say, devices)



# ---------------------------------------------------------------------------------- report
def _attrs_text(attrs: dict[str, str] | None) -> str:
    if not attrs:
        return "nothing"
    return f"{attrs['size']} {attrs['color']} {attrs['shape']}, {attrs['position']}"


def build_results(results: dict[str, Any], arrays: dict[str, Any],
                  cfgs: dict[str, mlc.ConfigDict], paths: dict[str, str],
                  times: dict[str, float], reused: dict[str, bool],
                  c: mlc.ConfigDict) -> DemoResults:
    """results.json + samples.npz → the report's DemoResults."""
    samples = results["samples"]
    images = [ImageSample(r["prompt"], arrays["t2i_images"][i], r["correct"],
                          _attrs_text(r["predicted"]), r["held_out"])
              for i, r in enumerate(samples.get(T2I, []))]
    audio = [AudioSample(r["prompt"], arrays["t2a_waves"][i], r["correct"],
                         " ".join(r["predicted"]) or "silence")
             for i, r in enumerate(samples.get(T2A, []))]
    captions = [CaptionSample(MODALITY_NAMES[IMAGE], r["truth"], r["generated"], r["correct"],
                              image=arrays["i2t_images"][i])
                for i, r in enumerate(samples.get(I2T, []))]
    captions += [CaptionSample(MODALITY_NAMES[AUDIO], r["truth"], r["generated"], r["correct"],
                               wave=arrays["a2t_waves"][i])
                 for i, r in enumerate(samples.get(A2T, []))]
    stage_list = [StageSummary(STAGE_TITLES[n], os.path.join(paths[n], "metrics.jsonl"),
                               STAGE_CURVES[n], times.get(n, 0.0), reused.get(n, False))
                  for n in TRAINING]
    return DemoResults(stages=stage_list, scores=results["scores"], targets=results["targets"],
                       images=images, audio=audio, captions=captions,
                       config_summary=config_summary(cfgs, c, results), fast=bool(c.fast))


def config_summary(cfgs: dict[str, mlc.ConfigDict], c: mlc.ConfigDict,
                   results: dict[str, Any]) -> dict[str, str]:
    """The report's configuration table: what each stage was, in one line each."""
    vi, va, lm = cfgs["vae_image"], cfgs["vae_audio"], cfgs["lm"]
    h, w, di = image_latent_shape(vi.vae)
    frames, da = audio_latent_shape(va.vae)
    m, g = lm.model, c.generate
    return {
        "image σ-VAE": f"32×32 → {h}×{w}×{di} latents; {vi.train.num_steps} steps × batch "
                       f"{vi.train.global_batch_size}",
        "audio σ-VAE": f"1 s → {frames}×{da} latents; {va.train.num_steps} steps × batch "
                       f"{va.train.global_batch_size}",
        "latents": f"{c.encode.num_examples} train examples per modality (σ-VAE μ, "
                   f"{lm.data.latent_noise} σ-VAE noise)",
        "LatentLM": f"{m.num_layers} layers × {m.emb_dim}, {m.num_heads} heads "
                    f"({m.num_kv_heads} KV), diffusion heads depth {m.head.depth}",
        "LatentLM training": f"{lm.train.num_steps} steps × {lm.train.global_batch_size} rows × "
                             f"{lm.data.seq_len} tokens, lr {lm.train.learning_rate}, EMA "
                             f"{lm.train.ema_decay}; tasks {lm.data.task_weights}",
        "sampling": f"{g.sampler}, {g.steps} steps, CFG image {g.cfg_scale_image} / audio "
                    f"{g.cfg_scale_audio}, temperature {g.temperature}; greedy captions"
                    if g.text_temperature == 0 else
                    f"{g.sampler}, {g.steps} steps, CFG image {g.cfg_scale_image} / audio "
                    f"{g.cfg_scale_audio}; caption temperature {g.text_temperature}",
        "seed": str(c.seed),
        "checkpoint scored": f"LatentLM step {results['lm_step']}",
    }
