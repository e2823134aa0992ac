"""The demo's generate stage: the four generation tasks on test-split prompts, every sample scored.

text→image on caption prompts (held-out combinations included), image→text and audio→text on the
first test examples (with the σ-VAEs' own reconstructions of the same inputs scored alongside),
text→audio on test captions. Media pass through the run's σ-VAEs with
:class:`~latentlm_jax.generate.codecs.MediaCodec`'s batched path. The stage saves ``results.json``
(per-sample records, the score table's entries) and ``samples.npz``, and a ``DONE`` marker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from latentlm_jax import paths
from latentlm_jax.data import scoring
from latentlm_jax.data.shapes_tones import (
    ShapesTones,
    all_combinations,
    image_caption,
    is_held_out,
)
from latentlm_jax.data.tokenizer import make_tokenizer
from latentlm_jax.demo.markers import clear_marker, fingerprint, marker_matches, write_marker
from latentlm_jax.demo.progress import Progress
from latentlm_jax.demo.stages import Say, checkpoint_step
from latentlm_jax.generate.codecs import MediaCodec
from latentlm_jax.generate.generator import Generator, SamplingOptions
from latentlm_jax.modality import AUDIO, IMAGE, MODALITY_NAMES
from latentlm_jax.train.checkpoint_io import load_model

T2I, I2T, T2A, A2T = "text_to_image", "image_to_text", "text_to_audio", "audio_to_text"
TASK_NAMES = {T2I: "text→image", I2T: "image→text", T2A: "text→audio", A2T: "audio→text"}


def t2i_prompts(n: int, seed: int) -> list[tuple[str, bool]]:
    """``n`` (caption, held_out) prompts. Every 180 consecutive prompts cover all 180 combinations
    once, the 18 held-out ones at every 10th place (so a short list still holds some); the order
    within each group is shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    combos = all_combinations()
    held = [c for c in combos if is_held_out(c)]
    seen = [c for c in combos if not is_held_out(c)]
    held = [held[i] for i in rng.permutation(len(held))]
    seen = [seen[i] for i in rng.permutation(len(seen))]
    order = []
    for i in range(len(combos)):
        order.append(held.pop(0) if i % 10 == 0 and held else seen.pop(0))
    out = []
    for i in range(n):
        size, color, shape, position = order[i % len(order)]
        out.append((image_caption(color=color, shape=shape, size=size, position=position),
                    is_held_out(order[i % len(order)])))
    return out


def _batches(items: list, batch_size: int, fn: Callable[[list, int], list],
             progress: Progress) -> list:
    """``fn`` over fixed-size batches (the last one padded by repeating its last item, so every
    call has the same batch shape); results in order, progress after every batch."""
    out: list = []
    size = min(batch_size, len(items))
    for b, start in enumerate(range(0, len(items), size)):
        chunk = items[start:start + size]
        results = fn(chunk + [chunk[-1]] * (size - len(chunk)), b)
        out.extend(results[:len(chunk)])
        progress.update(len(out))
    return out


def generate_samples(lm_dir: str, gen: mlc.ConfigDict, seed: int, say: Say
                     ) -> tuple[dict[str, list], dict[str, Any]]:
    """Runs the four generation tasks on test-split prompts and scores every sample.

    Returns (per-sample records, arrays): the records are JSON-able, the arrays hold the generated
    images/waves and the inputs of the captioning tasks, in record order.
    """
    model, config, step = load_model(lm_dir, use_ema=gen.use_ema)
    tok = make_tokenizer(config.data)
    image, audio = MediaCodec(config, IMAGE), MediaCodec(config, AUDIO)
    h, w, _ = image.grid()
    frames = audio.grid()[0]
    num_samples = config.data.audio_samples
    generator = Generator(model, config.model, tok, image_latents=h * w)
    base = dict(method=gen.sampler, steps=gen.steps, temperature=gen.temperature,
                text_temperature=gen.text_temperature, max_text_tokens=gen.max_text_tokens,
                max_audio_latents=frames)
    opts_image = SamplingOptions(cfg_scale=gen.cfg_scale_image, **base)
    opts_audio = SamplingOptions(cfg_scale=gen.cfg_scale_audio, **base)
    root = jax.random.key(seed)

    def key(task: str, b: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(root, sorted(TASK_NAMES).index(task)), b)

    # the noisy understanding inputs (generate.understanding_input="sample"): a key per task, apart
    # from the sampling keys (task indices are 0..3)
    inputs_root = jax.random.fold_in(root, len(TASK_NAMES))

    test = ShapesTones("test", seed)
    records: dict[str, list] = {}
    arrays: dict[str, Any] = {}
    say(f"LatentLM step {step} ({'EMA' if gen.use_ema else 'raw'} weights); sampler "
        f"{gen.sampler} × {gen.steps} steps, CFG image {gen.cfg_scale_image} / audio "
        f"{gen.cfg_scale_audio}; understanding inputs: σ-VAE {gen.understanding_input}")

    # text → image: every combination (held-out ones included)
    prompts = t2i_prompts(gen.text_to_image, seed)
    if prompts:
        imgs = _batches(
            [p for p, _ in prompts], gen.batch_size,
            lambda chunk, b: list(image.decode_batch(generator.text_to_latents(
                chunk, IMAGE, key(T2I, b), opts_image))),
            Progress(TASK_NAMES[T2I], len(prompts), "images"))
        recs = []
        for (prompt, held), img in zip(prompts, imgs, strict=True):
            s = scoring.score_image(img, prompt)
            recs.append({"prompt": prompt, "held_out": held, "correct": bool(s["correct"]),
                         "predicted": s["predicted"],
                         "attributes": {k: bool(s[k]) for k in scoring.ATTRIBUTES}})
        records[T2I], arrays["t2i_images"] = recs, np.stack(imgs)

    def captioning(task: str, codec: MediaCodec, opts: SamplingOptions, unit: str,
                   input_array: str, score_recon: Callable[[Any, dict], bool],
                   extra: Callable[[dict], dict] = lambda e: {}) -> None:
        """image→text / audio→text on the first test examples, with the σ-VAE's own
        reconstructions of the same inputs scored alongside."""
        n = gen[task]
        if not n:
            return
        name = MODALITY_NAMES[codec.modality]
        examples = [test[i] for i in range(n)]
        inputs = np.stack([e[name] for e in examples])
        z, recon = codec.reconstruct_batch(
            inputs, gen.understanding_input,
            jax.random.fold_in(inputs_root, sorted(TASK_NAMES).index(task)))
        texts = _batches(list(z), gen.batch_size,
                         lambda chunk, b: generator.latents_to_text(chunk, codec.modality,
                                                                    key(task, b), opts),
                         Progress(TASK_NAMES[task], n, unit))
        truth = f"{name}_caption"
        records[task] = [{"index": i, "truth": e[truth], "generated": t,
                          "correct": scoring.score_caption(t, e[truth]), **extra(e)}
                         for i, (e, t) in enumerate(zip(examples, texts, strict=True))]
        records[f"{name}_recon"] = [{"index": i, "correct": score_recon(r, e)}
                                    for i, (e, r) in enumerate(zip(examples, recon,
                                                                   strict=True))]
        arrays[input_array], arrays[f"{name}_recon"] = inputs, recon

    captioning(I2T, image, opts_image, "captions", "i2t_images",
               lambda r, e: bool(scoring.score_image(r, e["image_attrs"])["correct"]),
               extra=lambda e: {"held_out": is_held_out(e["image_attrs"])})

    # text → audio
    n = gen.text_to_audio
    if n:
        captions = [test[i]["audio_caption"] for i in range(n)]
        waves = _batches(
            captions, gen.batch_size,
            lambda chunk, b: list(audio.decode_batch(generator.text_to_latents(
                chunk, AUDIO, key(T2A, b), opts_audio), num_samples)),
            Progress(TASK_NAMES[T2A], n, "clips"))
        recs = []
        for i, (c, wave) in enumerate(zip(captions, waves, strict=True)):
            s = scoring.score_audio(wave, c)
            recs.append({"index": i, "prompt": c, "correct": bool(s["correct"]),
                         "count": bool(s["count"]), "predicted": list(s["predicted"])})
        records[T2A], arrays["t2a_waves"] = recs, np.stack(waves)

    captioning(A2T, audio, opts_audio, "transcripts", "a2t_waves",
               lambda r, e: bool(scoring.score_audio(r, e["audio_pitches"])["correct"]))
    return records, arrays


def _accuracy(flags: list[bool]) -> dict[str, float | int]:
    return {"accuracy": sum(bool(f) for f in flags) / len(flags), "n": len(flags)}


def summarise(records: Mapping[str, list]) -> dict[str, dict[str, float | int]]:
    """The score table's entries, computed from the per-sample records only: the four tasks
    first, then their breakdowns, then the σ-VAEs' own reconstructions of the captioning inputs."""
    main: dict[str, dict[str, float | int]] = {}
    detail: dict[str, dict[str, float | int]] = {}
    for task in (T2I, I2T, T2A, A2T):
        if records.get(task):
            main[TASK_NAMES[task]] = _accuracy([r["correct"] for r in records[task]])
    t2i = records.get(T2I, [])
    for label, held in (("held-out", True), ("seen", False)):
        flags = [r["correct"] for r in t2i if r["held_out"] == held]
        if flags:
            detail[f"{TASK_NAMES[T2I]}, {label} combinations"] = _accuracy(flags)
    if t2i:
        for a in scoring.ATTRIBUTES:
            detail[f"{TASK_NAMES[T2I]}: {a}"] = _accuracy([r["attributes"][a] for r in t2i])
    if records.get(T2A):
        detail[f"{TASK_NAMES[T2A]}: note count"] = _accuracy([r["count"] for r in records[T2A]])
    for name in MODALITY_NAMES.values():
        if records.get(f"{name}_recon"):
            detail[f"{name} σ-VAE reconstruction"] = _accuracy(
                [r["correct"] for r in records[f"{name}_recon"]])
    return {**main, **detail}


def generate_stage(lm_dir: str, out_dir: str, results_path: str, gen: mlc.ConfigDict, seed: int,
                   targets: Mapping[str, float], say: Say) -> bool:
    """Generates, scores and saves (``results_path`` JSON + ``out_dir/samples.npz``); reused when
    the LatentLM checkpoint and the generation settings are those of a complete earlier run."""
    lm_config = json.loads(paths.read_text(os.path.join(lm_dir, "config.json")))
    step = checkpoint_step(lm_dir)
    settings = gen.to_dict()
    key = fingerprint({"lm": fingerprint(lm_config), "step": step, "generate": settings,
                       "seed": seed})
    if marker_matches(out_dir, key) and paths.exists(results_path):
        say(f"reusing the samples and scores in {out_dir} and {results_path}")
        return True
    clear_marker(out_dir)
    records, arrays = generate_samples(lm_dir, gen, seed, say)
    results = {"lm_step": step, "seed": seed, "generate": settings,
               "scores": summarise(records), "targets": dict(targets), "samples": records}
    paths.makedirs(out_dir)
    with paths.open_file(os.path.join(out_dir, "samples.npz"), "wb") as f:
        np.savez_compressed(f, **arrays)
    paths.write_text(results_path, json.dumps(results, indent=1))
    write_marker(out_dir, {"key": key, "lm_step": step})
    return False


def load_results(results_path: str, out_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results.json, the arrays of samples.npz) as ``generate_stage`` wrote them."""
    results = json.loads(paths.read_text(results_path))
    with paths.open_file(os.path.join(out_dir, "samples.npz"), "rb") as f, np.load(f) as data:
        arrays = {k: data[k] for k in data.files}
    return results, arrays
