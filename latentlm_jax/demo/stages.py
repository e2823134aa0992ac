"""The demo's stages: training (σ-VAEs, LatentLM), encoding, and generation with scoring.

Each stage leaves something that says it is complete, so an interrupted demo resumes where it
stopped: a training stage is complete when its latest checkpoint is at ``train.num_steps`` (an
unfinished one resumes from its checkpoint); the encode and generate stages write a ``DONE`` marker
holding the fingerprint of their inputs and settings, and are redone when it no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections as mlc

from latentlm_jax.config.loading import ConfigError

Say = Callable[[str], None]
DONE = "DONE"
# Config fields that hold paths into the workdir: a moved workdir changes them, nothing else.
PATH_FIELDS = frozenset({"data.latent_files", "data.image_vae_workdir", "data.audio_vae_workdir",
                         "data.latent_stats_dir"})


class StageError(ConfigError):
    """A stage cannot run (mismatching earlier output, interrupted training): one line, exit 2."""

    def __init__(self, problem: str):
        super().__init__("", problem)


# ---------------------------------------------------------------------------------- progress
class Progress:
    """``label done/total (rate/s, ETA …)`` lines: rewritten in place on a terminal, one line per
    update otherwise (logs, tests)."""

    def __init__(self, label: str, total: int, unit: str = "", stream=None):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.stream = sys.stdout if stream is None else stream
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int) -> None:
        from latentlm_jax.train.metrics import format_duration

        seconds = time.perf_counter() - self.t0
        rate = done / seconds if seconds > 0 else 0.0
        eta = seconds / max(done, 1) * (self.total - done)
        unit = f" {self.unit}" if self.unit else ""
        line = (f"{self.label} {done}/{self.total} ({rate:,.1f}{unit}/s, "
                f"ETA {format_duration(eta)})")
        end = "\n" if done >= self.total or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=self.stream, flush=True)


# ---------------------------------------------------------------------------------- markers
def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able settings."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_marker(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, DONE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_marker(directory: str, content: Mapping[str, Any]) -> None:
    """Written last, atomically: its presence means everything else in ``directory`` is there."""
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, DONE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dict(content), f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, DONE))


def marker_matches(directory: str, key: str) -> bool:
    marker = read_marker(directory)
    return marker is not None and marker.get("key") == key


def clear_marker(directory: str) -> None:
    path = os.path.join(directory, DONE)
    if os.path.exists(path):
        os.remove(path)


# ---------------------------------------------------------------------------------- training
def config_json(config: mlc.ConfigDict) -> dict[str, Any]:
    """The config as ``config.json`` stores it (tuples as lists)."""
    return json.loads(config.to_json_best_effort())


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any],
                       ignore: frozenset[str] = PATH_FIELDS) -> list[str]:
    """``field: old → new`` for every field that differs (``ignore``d fields aside)."""
    a, b = _flatten(saved), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or a.get(key) == b.get(key):
            continue
        diffs.append(f"{key}: {a.get(key, '(absent)')!r} → {b.get(key, '(absent)')!r}")
    return diffs


def check_same_config(config: mlc.ConfigDict, workdir: str, what: str) -> None:
    """Refuses to continue a run whose workdir holds a different config (other than paths)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    diffs = config_differences(saved, config_json(config))
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
        raise StageError(f"{workdir} holds a {what} trained with other settings ({shown}); "
                         f"use a fresh --workdir, or delete {workdir} to retrain it")


def checkpoint_step(workdir: str) -> int | None:
    from latentlm_jax.train.checkpoint_io import latest_step

    return latest_step(workdir)


def train_stage(config: mlc.ConfigDict, workdir: str, what: str, say: Say,
                devices: list | None = None) -> bool:
    """Trains ``config`` into ``workdir`` unless its latest checkpoint is already at
    ``train.num_steps``. Returns whether it was reused. An earlier, unfinished run resumes from
    its checkpoint (the trainer does that)."""
    from latentlm_jax.train.checkpoint_io import save_run_config
    from latentlm_jax.train.trainer import train

    check_same_config(config, workdir, what)
    total = config.train.num_steps
    step = checkpoint_step(workdir)
    if step is not None and step >= total:
        say(f"reusing the {what} in {workdir}: its checkpoint is at step {step}/{total}")
        return True
    save_run_config(config, workdir)
    train(config, workdir, devices=devices)
    step = checkpoint_step(workdir)
    if step is None or step < total:
        raise StageError(f"training of the {what} stopped at step {step or 0}/{total} "
                         "(preempted?); run the same command again to resume it")
    return False


# ---------------------------------------------------------------------------------- encoding
def encode_stage(vaes: Mapping[str, str], out_dir: str, *, num_examples: int, batch_size: int,
                 seed: int, say: Say) -> bool:
    """Encodes the first ``num_examples`` train examples with each σ-VAE (``{"image": workdir,
    "audio": workdir}``) into ``out_dir``. Returns whether an earlier complete run was reused."""
    from latentlm_jax.data.encode_latents import encode_dataset
    from latentlm_jax.data.shapes_tones import ShapesTones
    from latentlm_jax.train.checkpoint_io import load_model

    key = encode_key(vaes, num_examples=num_examples, batch_size=batch_size, seed=seed)
    if marker_matches(out_dir, key):
        say(f"reusing the latents in {out_dir} ({num_examples} per modality)")
        return True
    clear_marker(out_dir)
    dataset = ShapesTones("train", seed)
    for modality, vae_dir in vaes.items():
        model, config, step = load_model(vae_dir)
        progress = Progress(f"encoding {modality}", num_examples, "examples")
        stats = encode_dataset(model, config.task, dataset, out_dir, num_examples=num_examples,
                               batch_size=batch_size, seed=seed,
                               progress=lambda done, total, s, p=progress: p.update(done))
        say(f"wrote {num_examples} {modality} latent sequences of {stats['sequence_length']} × "
            f"{stats['latent_dim']} (σ-VAE step {step})")
    write_marker(out_dir, {"key": key, "num_examples": num_examples})
    return False


def encode_key(vaes: Mapping[str, str], **settings: Any) -> str:
    """Changes when a σ-VAE (its config or checkpoint step) or an encode setting changes."""
    parts = {}
    for modality, vae_dir in sorted(vaes.items()):
        with open(os.path.join(vae_dir, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
        parts[modality] = {"config": fingerprint(saved), "step": checkpoint_step(vae_dir)}
    return fingerprint({"vaes": parts, **settings})


def latent_files(out_dir: str) -> tuple[str, str]:
    """The (image, audio) shards ``encode_stage`` writes, as absolute paths."""
    return tuple(os.path.abspath(os.path.join(out_dir, f"latents-{m}-00000-of-00001.array_record"))
                 for m in ("image", "audio"))


# ---------------------------------------------------------------------------------- generation
T2I, I2T, T2A, A2T = "text_to_image", "image_to_text", "text_to_audio", "audio_to_text"
TASK_NAMES = {T2I: "text→image", I2T: "image→text", T2A: "text→audio", A2T: "audio→text"}


def t2i_prompts(n: int, seed: int) -> list[tuple[str, bool]]:
    """``n`` (caption, held_out) prompts. Every 180 consecutive prompts cover all 180 combinations
    once, the 18 held-out ones at every 10th place (so a short list still holds some); the order
    within each group is shuffled with ``seed``."""
    import numpy as np

    from latentlm_jax.data.shapes_tones import all_combinations, image_caption, is_held_out

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


def _jitted():
    from flax import nnx

    @nnx.jit
    def decode(vae, z):
        return vae.decode(z)

    @nnx.jit
    def mode(vae, x):
        return vae.mode(x)

    return decode, mode


_DECODE, _MODE = None, None


def _vae_fns():
    global _DECODE, _MODE
    if _DECODE is None:
        _DECODE, _MODE = _jitted()
    return _DECODE, _MODE


def decode_images(codec, latents: list) -> Any:
    """Normalised [N, D] latent sequences → uint8 images [B, H, W, 3] (raster order grid)."""
    import jax.numpy as jnp
    import numpy as np

    from latentlm_jax.data.encode_latents import denormalise
    from latentlm_jax.vae.samples import to_uint8

    decode, _ = _vae_fns()
    h, w, d = codec.grid()
    z = denormalise(np.stack(latents), codec.stats).reshape(-1, h, w, d)
    return to_uint8(np.asarray(decode(codec.vae, jnp.asarray(z))))


def decode_audio(codec, latents: list, num_samples: int) -> Any:
    """Normalised [n_i, D] latent sequences (any n_i ≥ 1) → float32 waves [B, num_samples]
    (decoded per length, then cut or zero-padded to ``num_samples``)."""
    import jax.numpy as jnp
    import numpy as np

    from latentlm_jax.data.encode_latents import denormalise

    decode, _ = _vae_fns()
    out = np.zeros((len(latents), num_samples), np.float32)
    for n in sorted({len(z) for z in latents}):
        idx = [i for i, z in enumerate(latents) if len(z) == n]
        z = denormalise(np.stack([latents[i] for i in idx]), codec.stats)
        wave = np.asarray(decode(codec.vae, jnp.asarray(z)), np.float32)[:, :num_samples]
        out[idx, :wave.shape[1]] = wave
    return np.clip(np.nan_to_num(out), -1.0, 1.0)


def encode_media(codec, media: Any) -> tuple[Any, Any]:
    """A batch of images (uint8) or waves → (normalised μ sequences [B, N, D], reconstructions
    decode(μ) as uint8 images or float32 waves)."""
    import jax.numpy as jnp
    import numpy as np

    from latentlm_jax.data.encode_latents import model_input, normalise, to_sequence
    from latentlm_jax.vae.samples import to_uint8

    decode, mode = _vae_fns()
    mu = np.asarray(mode(codec.vae, model_input(codec.name, media)))
    recon = np.asarray(decode(codec.vae, jnp.asarray(mu)))
    if codec.name == "image":
        recon = to_uint8(recon)
    else:
        recon = np.clip(recon, -1.0, 1.0).astype(np.float32)
    return normalise(to_sequence(mu), codec.stats), recon


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
    import jax
    import numpy as np

    from latentlm_jax.data import scoring
    from latentlm_jax.data.shapes_tones import ShapesTones, is_held_out
    from latentlm_jax.data.tokenizer import make_tokenizer
    from latentlm_jax.generate.codecs import MediaCodec
    from latentlm_jax.generate.generator import Generator, SamplingOptions
    from latentlm_jax.models.latentlm import AUDIO, IMAGE
    from latentlm_jax.train.checkpoint_io import load_model

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

    test = ShapesTones("test", seed)
    records: dict[str, list] = {}
    arrays: dict[str, Any] = {}
    say(f"LatentLM step {step} ({'EMA' if gen.use_ema else 'raw'} weights); sampler "
        f"{gen.sampler} × {gen.steps} steps, CFG image {gen.cfg_scale_image} / audio "
        f"{gen.cfg_scale_audio}")

    # text → image: every combination (held-out ones included)
    prompts = t2i_prompts(gen.text_to_image, seed)
    if prompts:
        imgs = _batches(
            [p for p, _ in prompts], gen.batch_size,
            lambda chunk, b: list(decode_images(image, generator.text_to_latents(
                chunk, IMAGE, key(T2I, b), opts_image))),
            Progress(TASK_NAMES[T2I], len(prompts), "images"))
        recs = []
        for (prompt, held), img in zip(prompts, imgs, strict=True):
            s = scoring.score_image(img, prompt)
            recs.append({"prompt": prompt, "held_out": held, "correct": bool(s["correct"]),
                         "predicted": s["predicted"],
                         "attributes": {k: bool(s[k]) for k in scoring.ATTRIBUTES}})
        records[T2I], arrays["t2i_images"] = recs, np.stack(imgs)

    def captioning(task: str, codec: Any, modality: int, opts: SamplingOptions, unit: str,
                   input_array: str, score_recon: Callable[[Any, dict], bool],
                   extra: Callable[[dict], dict] = lambda e: {}) -> None:
        """image→text / audio→text on the first test examples, with the σ-VAE's own
        reconstructions of the same inputs scored alongside."""
        n = gen[task]
        if not n:
            return
        name = "image" if modality == IMAGE else "audio"
        examples = [test[i] for i in range(n)]
        inputs = np.stack([e[name] for e in examples])
        z, recon = encode_media(codec, inputs)
        texts = _batches(list(z), gen.batch_size,
                         lambda chunk, b: generator.latents_to_text(chunk, modality,
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

    captioning(I2T, image, IMAGE, opts_image, "captions", "i2t_images",
               lambda r, e: bool(scoring.score_image(r, e["image_attrs"])["correct"]),
               extra=lambda e: {"held_out": is_held_out(e["image_attrs"])})

    # text → audio
    n = gen.text_to_audio
    if n:
        captions = [test[i]["audio_caption"] for i in range(n)]
        waves = _batches(
            captions, gen.batch_size,
            lambda chunk, b: list(decode_audio(audio, generator.text_to_latents(
                chunk, AUDIO, key(T2A, b), opts_audio), num_samples)),
            Progress(TASK_NAMES[T2A], n, "clips"))
        recs = []
        for i, (c, wave) in enumerate(zip(captions, waves, strict=True)):
            s = scoring.score_audio(wave, c)
            recs.append({"index": i, "prompt": c, "correct": bool(s["correct"]),
                         "count": bool(s["count"]), "predicted": list(s["predicted"])})
        records[T2A], arrays["t2a_waves"] = recs, np.stack(waves)

    captioning(A2T, audio, AUDIO, opts_audio, "transcripts", "a2t_waves",
               lambda r, e: bool(scoring.score_audio(r, e["audio_pitches"])["correct"]))
    return records, arrays


def _accuracy(flags: list[bool]) -> dict[str, float | int]:
    return {"accuracy": sum(bool(f) for f in flags) / len(flags), "n": len(flags)}


def summarise(records: Mapping[str, list]) -> dict[str, dict[str, float | int]]:
    """The score table's entries, computed from the per-sample records only: the four tasks
    first, then their breakdowns, then the σ-VAEs' own reconstructions of the captioning inputs."""
    from latentlm_jax.data.scoring import ATTRIBUTES

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
        for a in ATTRIBUTES:
            detail[f"{TASK_NAMES[T2I]}: {a}"] = _accuracy([r["attributes"][a] for r in t2i])
    if records.get(T2A):
        detail[f"{TASK_NAMES[T2A]}: note count"] = _accuracy([r["count"] for r in records[T2A]])
    for name in ("image", "audio"):
        if records.get(f"{name}_recon"):
            detail[f"{name} σ-VAE reconstruction"] = _accuracy(
                [r["correct"] for r in records[f"{name}_recon"]])
    return {**main, **detail}


def generate_stage(lm_dir: str, out_dir: str, results_path: str, gen: mlc.ConfigDict, seed: int,
                   targets: Mapping[str, float], say: Say) -> bool:
    """Generates, scores and saves (``results_path`` JSON + ``out_dir/samples.npz``); reused when
    the LatentLM checkpoint and the generation settings are those of a complete earlier run."""
    import numpy as np

    with open(os.path.join(lm_dir, "config.json"), encoding="utf-8") as f:
        lm_config = json.load(f)
    step = checkpoint_step(lm_dir)
    settings = gen.to_dict()
    key = fingerprint({"lm": fingerprint(lm_config), "step": step, "generate": settings,
                       "seed": seed})
    if marker_matches(out_dir, key) and os.path.exists(results_path):
        say(f"reusing the samples and scores in {out_dir} and {results_path}")
        return True
    clear_marker(out_dir)
    records, arrays = generate_samples(lm_dir, gen, seed, say)
    results = {"lm_step": step, "seed": seed, "generate": settings,
               "scores": summarise(records), "targets": dict(targets), "samples": records}
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, "samples.npz"), **arrays)
    tmp = results_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, results_path)
    write_marker(out_dir, {"key": key, "lm_step": step})
    return False


def load_results(results_path: str, out_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results.json, the arrays of samples.npz) as ``generate_stage`` wrote them."""
    import numpy as np

    with open(results_path, encoding="utf-8") as f:
        results = json.load(f)
    with np.load(os.path.join(out_dir, "samples.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return results, arrays
