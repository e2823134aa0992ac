"""Config validation: every check that can fail before anything is compiled.

``check_schema`` compares a config against :func:`base_config` (unknown keys, wrong types);
``check_values`` checks sizes and divisibility. The check against the devices lives with the mesh
(:mod:`latentlm_jax.parallel.mesh_check`), so ``config/`` imports nothing above it. Each failure is
a :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections as mlc

from latentlm_jax.config.base import base_config
from latentlm_jax.config.data_sources import (
    ALL_SOURCES,
    BUILTIN_SOURCES,
    USER_MEDIA_SOURCES,
    VAE_SOURCES,
)
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.task_weights import parse_task_weights
from latentlm_jax.modality import IMAGE, MODALITY_NAMES, SPECIAL_TOKENS, VAE_TASKS

_NUMBER = (int, float)
# Pillow refuses to open images with more pixels (2 × PIL.Image.MAX_IMAGE_PIXELS, its
# DecompressionBombError), so data.max_image_pixels cannot allow more.
PILLOW_MAX_PIXELS = 178_956_970


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, _NUMBER) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list)
    return isinstance(value, type(default))


def check_schema(config: mlc.ConfigDict, schema: mlc.ConfigDict | None = None,
                 prefix: str = "") -> None:
    """Unknown keys and wrong types, recursively, against ``schema`` (default: the base config)."""
    schema = base_config() if schema is None else schema
    for key in config:
        field = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(field, "unknown key")
        value, default = config[key], schema[key]
        if isinstance(default, mlc.ConfigDict):
            if not isinstance(value, mlc.ConfigDict):
                raise ConfigError(field, f"must be a group of fields, got {type(value).__name__}")
            check_schema(value, default, prefix=f"{field}.")
        elif not _type_ok(value, default):
            raise ConfigError(field, f"expected {type(default).__name__}, "
                                     f"got {type(value).__name__} {value!r}")


def _positive(config: mlc.ConfigDict, *fields: str) -> None:
    for field in fields:
        node: Any = config
        for key in field.split("."):
            node = node[key]
        if node <= 0:
            raise ConfigError(field, f"must be positive, got {node}")


def _choice(config: mlc.ConfigDict, field: str, choices: tuple[str, ...]) -> None:
    node: Any = config
    for key in field.split("."):
        node = node[key]
    if node not in choices:
        raise ConfigError(field, f"must be one of {', '.join(choices)}; got {node!r}")


def check_values(config: mlc.ConfigDict) -> None:
    """Sizes, choices and divisibility that do not depend on the devices."""
    _choice(config, "task", ("lm", "vae_image", "vae_audio"))
    m = config.model
    _positive(config, "model.vocab_size", "model.num_layers", "model.emb_dim", "model.num_heads",
              "model.num_kv_heads", "model.head_dim", "model.mlp_dim", "model.rope_theta",
              "model.norm_eps", "model.init_std")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError("model.num_heads", f"{m.num_heads} heads are not divisible by "
                                             f"num_kv_heads={m.num_kv_heads}")
    if m.head_dim % 2:
        raise ConfigError("model.head_dim", f"must be even for RoPE, got {m.head_dim}")
    if config.task == "lm":
        check_vocab(config)
    _choice(config, "model.dtype", ("float32", "bfloat16"))
    _choice(config, "model.param_dtype", ("float32",))
    _choice(config, "model.remat_policy", ("none", "full", "save_dots"))
    _choice(config, "model.attention", ("xla", "dot_product", "splash", "cpu_flash"))
    _choice(config, "model.rope_frequencies", ("geometric", "authors"))  # models/layers.py
    _choice(config, "model.init", ("normal", "torch_default"))  # models/layers.py INITS
    _choice(config, "model.diffusion.schedule", ("cosine", "linear"))
    _choice(config, "model.diffusion.prediction", ("eps", "v"))
    _positive(config, "model.head.depth", "model.head.mlp_ratio", "model.diffusion.batch_mul")
    for field in ("image_latent_dim", "audio_latent_dim"):
        if m[field] < 0:
            raise ConfigError(f"model.{field}", f"must be ≥ 0 (0 = off), got {m[field]}")
    if not 0.0 <= m.diffusion.target_fraction <= 1.0:
        raise ConfigError("model.diffusion.target_fraction",
                          f"must be in [0, 1], got {m.diffusion.target_fraction}")
    if m.head.width < 0 or m.diffusion.loss_weight < 0:
        raise ConfigError("model.head.width", "head width and diffusion loss weight must be ≥ 0")

    _positive(config, "data.seq_len", "data.prefetch")
    _choice(config, "data.tokenizer", ("byte", "sentencepiece"))
    _choice(config, "data.bad_input", ("skip", "error"))
    _choice(config, "data.latent_noise", ("fresh", "frozen"))
    _choice(config, "data.image_crop", ("bicubic_square", "adm"))  # data/media.py IMAGE_CROPS
    _choice(config, "data.latent_normalisation", ("per_dim", "scalar"))
    _choice(config, "model.diffusion.loss_weighting", ("per_modality", "per_target"))
    check_data_source(config.data)
    if config.task in VAE_TASKS.values():
        check_vae(config.vae, config.task)
        check_vae_data(config.task, config.data, config.vae)
    if not 0.0 <= config.data.cond_drop < 1.0:
        raise ConfigError("data.cond_drop", f"must be in [0, 1), got {config.data.cond_drop}")
    if config.data.max_interleaved < 2:
        raise ConfigError("data.max_interleaved", "must be ≥ 2")
    check_class_conditional(config)
    if config.data.task_weights:
        check_task_weights(config)
    if config.data.latents_dir:
        if config.task != "lm":
            raise ConfigError("data.latents_dir", f"latents train a LatentLM (task='lm'), not a "
                                                  f"{config.task!r} run")
        if config.data.source != "latents":
            raise ConfigError("data.latents_dir", f"needs data.source='latents', got "
                                                  f"{config.data.source!r}")
    if config.data.num_workers < 0:
        raise ConfigError("data.num_workers", f"must be ≥ 0, got {config.data.num_workers}")
    if config.data.tokenizer == "sentencepiece" and not config.data.tokenizer_model:
        raise ConfigError("data.tokenizer_model", "required when data.tokenizer=sentencepiece")

    t = config.train
    _positive(config, "train.global_batch_size", "train.num_steps", "train.grad_accum_steps",
              "train.learning_rate", "train.log_every")
    for field in ("warmup_steps", "eval_every"):
        if t[field] < 0:
            raise ConfigError(f"train.{field}", f"must be ≥ 0, got {t[field]}")
    if config.task == "lm":
        check_eval_data(config)
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError("train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    if not (0.0 <= t.b1 < 1.0 and 0.0 <= t.b2 < 1.0):
        raise ConfigError("train.b1", "Adam betas must be in [0, 1)")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError("train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _choice(config, "train.nonfinite", ("halt", "skip"))
    _positive(config, "train.max_nonfinite")
    _positive(config, "train.profile_steps")
    if t.profile_start_step < -1:
        raise ConfigError("train.profile_start_step", f"must be ≥ 0, or -1 (off), got "
                                                      f"{t.profile_start_step}")
    if t.profile_start_step + t.profile_steps > t.num_steps and t.profile_start_step >= 0:
        raise ConfigError("train.profile_start_step", f"the profiled steps "
                                                      f"{t.profile_start_step + 1}–"
                                                      f"{t.profile_start_step + t.profile_steps}"
                                                      f" end after train.num_steps="
                                                      f"{t.num_steps}")
    if t.grad_clip < 0 or t.weight_decay < 0:
        raise ConfigError("train.grad_clip", "grad_clip and weight_decay must be ≥ 0")
    if t.global_batch_size % t.grad_accum_steps:
        raise ConfigError("train.grad_accum_steps",
                          f"global_batch_size={t.global_batch_size} is not divisible by "
                          f"grad_accum_steps={t.grad_accum_steps}")
    _positive(config, "checkpoint.every_steps", "checkpoint.keep", "checkpoint.agree_every_steps")
    if config.checkpoint.every_minutes < 0:
        raise ConfigError("checkpoint.every_minutes",
                          f"must be ≥ 0 (0 = off), got {config.checkpoint.every_minutes}")
    if config.metrics.peak_tflops_per_device < 0:
        raise ConfigError("metrics.peak_tflops_per_device", "must be ≥ 0 (0 = calibrate)")

    axes = tuple(config.mesh.axes)
    for level in ("ici", "dcn"):
        for axis in config.mesh[level]:
            # A size-1 entry for an axis the mesh lacks shards nothing (runs made before the
            # "context" axis existed list three axes and get context=1 from the defaults).
            if axis not in axes and config.mesh[level][axis] != 1:
                raise ConfigError(f"mesh.{level}.{axis}", f"not one of mesh.axes {axes}")
        for axis in axes:
            if axis not in config.mesh[level]:
                raise ConfigError(f"mesh.{level}.{axis}", "missing (give 1 for unused axes)")
            size = config.mesh[level][axis]
            if size == 0 or size < -1:
                raise ConfigError(f"mesh.{level}.{axis}", f"must be positive or -1, got {size}")
        if sum(1 for a in axes if config.mesh[level][a] == -1) > 1:
            raise ConfigError(f"mesh.{level}", "at most one axis may be -1 (fill)")
    for i, rule in enumerate(config.sharding_rules):
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"sharding_rules[{i}]",
                              f"must be (logical_name, mesh_axes), got {rule}")
        mesh_axes = rule[1] if isinstance(rule[1], tuple | list) else (rule[1],)
        for a in mesh_axes:
            if a is not None and a not in axes:
                raise ConfigError(f"sharding_rules[{i}]",
                                  f"mesh axis {a!r} not in mesh.axes {axes}")


def check_task_weights(config: mlc.ConfigDict) -> None:
    """``data.task_weights`` parses, and leaves a LatentLM some task for each latent modality it
    trains on (an image record can only become an image task)."""
    spec = config.data.task_weights
    try:
        weights = parse_task_weights(spec)
    except ValueError as e:
        raise ConfigError("data.task_weights", f"{e} (e.g. 'text_to_image=2,image_to_text=1')"
                          ) from e
    if not any(weights.values()):
        raise ConfigError("data.task_weights", f"every task has weight 0 in {spec!r}: give "
                                               "at least one a positive weight")
    if config.task != "lm" or config.data.source != "latents":
        return
    for field, name in (("image_latent_dim", "image"), ("audio_latent_dim", "audio")):
        tasks = (f"text_to_{name}", f"{name}_to_text", "interleaved")
        if config.model[field] > 0 and not any(weights[t] > 0 for t in tasks):
            raise ConfigError("data.task_weights", f"no {name} task ({', '.join(tasks)}) has a "
                                                   f"positive weight in {spec!r}, but the "
                                                   f"{name} latents are trained on")


# Sources whose examples can carry a class label (data.label).
LABEL_SOURCES = ("shapes_tones", "manifest", "tfds", "latents")


def check_class_conditional(config: mlc.ConfigDict) -> None:
    """``model.num_classes`` and ``data.label`` go together (docs/class_conditional.md)."""
    m, d = config.model, config.data
    if m.num_classes < 0:
        raise ConfigError("model.num_classes", f"must be ≥ 0 (0 = off), got {m.num_classes}")
    if config.task != "lm":
        return
    if d.label and m.num_classes == 0:
        raise ConfigError("model.num_classes", f"data.label={d.label!r} trains class-"
                                               "conditional generation: set the number of "
                                               "classes (> 0)")
    if m.num_classes and not d.label:
        raise ConfigError("data.label", f"model.num_classes={m.num_classes} needs the class-"
                                        "label field of the data (e.g. 'label')")
    if not d.label:
        return
    if d.source not in LABEL_SOURCES:
        raise ConfigError("data.label", f"class labels come from {', '.join(LABEL_SOURCES)}; "
                                        f"got data.source={d.source!r}")
    if d.source == "shapes_tones" and d.label != "label":
        raise ConfigError("data.label", f"the built-in data's class field is 'label' (shape × "
                                        f"colour × size × position); got {d.label!r}")
    if m.image_latent_dim == 0 and not d.latents_dir:
        raise ConfigError("model.image_latent_dim", "class-conditional documents are image "
                                                    "latents: set it (> 0)")


def _powers_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def _sizes(field: str, values: Any, minimum: int = 1) -> None:
    if not values or not all(isinstance(v, int) and v >= minimum for v in values):
        raise ConfigError(field, f"must be a non-empty tuple of integers ≥ {minimum}, got "
                                 f"{tuple(values)!r}")


def check_vae(v: mlc.ConfigDict, task: str) -> None:
    """The σ-VAE fields of a ``vae_image`` / ``vae_audio`` run: choices, positive sizes, the
    image downsampling and the audio hop that the latent shape is computed from."""
    if v.kind not in ("sigma", "plain"):
        raise ConfigError("vae.kind", f"must be one of sigma, plain; got {v.kind!r}")
    if v.dtype not in ("float32", "bfloat16"):
        raise ConfigError("vae.dtype", f"must be one of float32, bfloat16; got {v.dtype!r}")
    for field in ("std", "beta", "kl_weight"):
        if not v[field] >= 0:
            raise ConfigError(f"vae.{field}", f"must be ≥ 0, got {v[field]}")
    if v.eval_examples <= 0:
        raise ConfigError("vae.eval_examples", f"must be positive, got {v.eval_examples}")
    lo = v.loss
    if lo.recon not in ("l1", "l2", "l1_l2"):
        raise ConfigError("vae.loss.recon", f"must be one of l1, l2, l1_l2; got {lo.recon!r}")
    for field in ("recon_weight", "stft_weight", "stft_floor", "adv_weight", "adv_start_step"):
        if not lo[field] >= 0:
            raise ConfigError(f"vae.loss.{field}", f"must be ≥ 0, got {lo[field]}")
    for field in ("disc_channels", "disc_layers"):
        if lo[field] <= 0:
            raise ConfigError(f"vae.loss.{field}", f"must be positive, got {lo[field]}")
    if task == "vae_image":
        im = v.image
        for field in ("resolution", "in_channels", "latent_dim", "channels"):
            if im[field] <= 0:
                raise ConfigError(f"vae.image.{field}", f"must be positive, got {im[field]}")
        if not (_powers_of_two(im.downsample) and im.downsample >= 2
                and im.resolution % im.downsample == 0):
            raise ConfigError("vae.image.downsample", f"must be a power of two ≥ 2 dividing "
                                                      f"vae.image.resolution={im.resolution}; "
                                                      f"got {im.downsample}")
        if not (_powers_of_two(im.patch_size) and im.patch_size <= im.downsample):
            raise ConfigError("vae.image.patch_size", f"must be a power of two ≤ downsample="
                                                      f"{im.downsample}; got {im.patch_size}")
        _sizes("vae.image.channel_mult", im.channel_mult)
        _sizes("vae.image.num_res_blocks", im.num_res_blocks, minimum=0)
        return
    au = v.audio
    for field in ("sample_rate", "num_samples", "latent_dim", "channels", "stft_hop",
                  "patch_size", "kernel_size"):
        if au[field] <= 0:
            raise ConfigError(f"vae.audio.{field}", f"must be positive, got {au[field]}")
    if au.representation not in ("stft", "waveform"):
        raise ConfigError("vae.audio.representation",
                          f"must be one of stft, waveform; got {au.representation!r}")
    _sizes("vae.audio.strides", au.strides)
    hop = (au.stft_hop if au.representation == "stft" else au.patch_size) * math.prod(au.strides)
    if au.num_samples % hop:
        raise ConfigError("vae.audio.num_samples", f"{au.num_samples} is not a multiple of the "
                                                   f"hop {hop} (stft_hop or patch_size × the "
                                                   f"strides {tuple(au.strides)})")
    _sizes("vae.audio.channel_mult", au.channel_mult)
    _sizes("vae.audio.num_res_blocks", au.num_res_blocks, minimum=0)
    _sizes("vae.loss.stft_fft_sizes", lo.stft_fft_sizes)
    _sizes("vae.loss.stft_hops", lo.stft_hops)
    if len(lo.stft_fft_sizes) != len(lo.stft_hops):
        raise ConfigError("vae.loss.stft_hops", f"{len(lo.stft_hops)} hops for "
                                                f"{len(lo.stft_fft_sizes)} FFT sizes "
                                                "(vae.loss.stft_fft_sizes): give one each")


# The byte tokenizer's ids: the special tokens, then the 256 bytes (data/tokenizer.py).
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def check_vocab(config: mlc.ConfigDict) -> None:
    """``model.vocab_size`` holds the special tokens, and every byte with the byte tokenizer (a
    SentencePiece model's size is checked against its file by ``latentlm train``)."""
    size, specials = config.model.vocab_size, len(SPECIAL_TOKENS)
    if size <= specials:
        raise ConfigError("model.vocab_size", f"{size} cannot hold the {specials} special tokens "
                                              f"{', '.join(SPECIAL_TOKENS)} and any text")
    if config.data.tokenizer == "byte" and size < BYTE_VOCAB_SIZE:
        raise ConfigError("model.vocab_size", f"{size} is smaller than the byte tokenizer's "
                                              f"{BYTE_VOCAB_SIZE} ids ({specials} special tokens "
                                              f"+ 256 bytes): set "
                                              f"--config.model.vocab_size={BYTE_VOCAB_SIZE}")


def check_data_source(d: mlc.ConfigDict) -> None:
    """``data.source`` is known and the fields it needs are set; the pixel limit is usable."""
    if d.source not in ALL_SOURCES:
        raise ConfigError("data.source", f"must be one of {', '.join(ALL_SOURCES)}; "
                                         f"got {d.source!r}")
    if d.source == "manifest" and not d.manifest:
        raise ConfigError("data.manifest", "required when data.source='manifest' (the path of "
                                           "a JSONL manifest; docs/data_sources.md)")
    if d.source == "tfds" and not d.tfds_name:
        raise ConfigError("data.tfds_name", "required when data.source='tfds'")
    if not 0 < d.max_image_pixels <= PILLOW_MAX_PIXELS:
        raise ConfigError("data.max_image_pixels",
                          f"must be in [1, {PILLOW_MAX_PIXELS:,}] (Pillow refuses larger images "
                          f"as decompression bombs); got {d.max_image_pixels:,}")


# The held-out counterpart of each data.source's field (docs/evaluation.md).
EVAL_FIELDS = {"shapes_tones_captions": "eval_split", "shapes_tones": "eval_split",
               "tfds": "eval_split", "text_files": "eval_text_files",
               "manifest": "eval_manifest", "latents": "eval_latent_files"}


def check_eval_data(config: mlc.ConfigDict) -> None:
    """An LM run with ``train.eval_every`` > 0 names held-out data for its source (the built-in
    data has its test split); its eval sizes are positive."""
    d, every = config.data, config.train.eval_every
    _positive(config, "data.eval_examples", "data.eval_draws")
    builtin = d.source in BUILTIN_SOURCES
    if d.eval_split and EVAL_FIELDS.get(d.source) != "eval_split":
        raise ConfigError("data.eval_split", f"names a split of the built-in or TFDS data, not "
                                             f"of data.source={d.source!r}")
    if every <= 0:
        return
    if builtin:
        if (d.eval_split or "test") == d.split:
            raise ConfigError("data.eval_split", f"{d.eval_split or 'test'!r} is the training "
                                                 "split (data.split): not held out")
        return
    field = EVAL_FIELDS.get(d.source)
    if field is None:  # an unknown source: check_data_source names it
        return
    if d.source == "tfds" and d.eval_split == d.tfds_split:
        raise ConfigError("data.eval_split", f"{d.eval_split!r} is the training split "
                                             "(data.tfds_split): not held out")
    held_out = d[field] or (d.source == "latents" and d.eval_latents_dir)
    if not held_out:
        also = " or data.eval_latents_dir" if d.source == "latents" else ""
        raise ConfigError(f"data.{field}", f"train.eval_every={every} but data.source="
                                           f"{d.source!r} names no held-out data: set "
                                           f"data.{field}{also}, or train.eval_every=0")


def check_vae_data(task: str, d: mlc.ConfigDict, vae: mlc.ConfigDict) -> None:
    """Whether a σ-VAE (``task``, its ``vae`` fields) can read the data ``d`` names: a source of
    its modality, delivered at the σ-VAE's input size. Used for training, and by ``eval`` /
    ``reconstruct`` with another config's data section."""
    name = MODALITY_NAMES[next(m for m, t in VAE_TASKS.items() if t == task)]
    if d.source not in VAE_SOURCES:
        yours = ", ".join(USER_MEDIA_SOURCES)
        raise ConfigError("data.source", f"a {task} run reads {name}s from the built-in data "
                                         f"(shapes_tones) or your own ({yours}); "
                                         f"got {d.source!r}")
    if d.source not in USER_MEDIA_SOURCES:
        return
    if d.source == "tfds":
        mapped = {item.partition("=")[0].strip() for item in d.tfds_feature_map.split(",")}
        if name not in mapped:
            raise ConfigError("data.tfds_feature_map",
                              f"maps no {name} ({d.tfds_feature_map!r}); a {task} run needs "
                              f"'{name}=<feature>'")
    if name == MODALITY_NAMES[IMAGE]:
        pairs = [("data.image_resolution", d.image_resolution, "vae.image.resolution",
                  vae.image.resolution)]
    else:
        pairs = [("data.sample_rate", d.sample_rate, "vae.audio.sample_rate",
                  vae.audio.sample_rate),
                 ("data.audio_samples", d.audio_samples, "vae.audio.num_samples",
                  vae.audio.num_samples)]
    for field, value, vae_field, vae_value in pairs:
        if value != vae_value:
            raise ConfigError(field, f"{value}, but the σ-VAE reads {vae_value} "
                                     f"({vae_field}); set both to the same value")


def validate(config: mlc.ConfigDict) -> None:
    """Schema and values: every check that needs no devices (the mesh is checked against the
    devices by :func:`latentlm_jax.parallel.mesh_check.check_mesh`)."""
    check_schema(config)
    check_values(config)
