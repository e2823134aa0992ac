"""Checks of a LatentLM's inputs against the config before ``latentlm train`` writes anything:
the tokenizer fits ``model.vocab_size``; pre-encoded latents and the σ-VAE workdirs agree with the
model's latent dims and ``data.seq_len``. Each failure is one :class:`ConfigError` naming the
field and the fix (docs/reliability.md)."""

from __future__ import annotations

import json
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.target_capacity import check_span_budget
from latentlm_jax.modality import LATENT_DIM_FIELDS, MODALITY_NAMES, VAE_TASKS

SPAN_OVERHEAD = 4  # <boi>/<boa>, <eoi>/<eoa>, and room for a token of text on each side


def check_tokenizer(config: mlc.ConfigDict) -> None:
    """A SentencePiece model exists and fits in ``model.vocab_size`` (the byte tokenizer's size is
    checked by ``config/validate.py``)."""
    if config.data.tokenizer != "sentencepiece":
        return
    if not paths.is_file(config.data.tokenizer_model):
        raise ConfigError("data.tokenizer_model",
                          f"no such file: {paths.as_str(config.data.tokenizer_model)} (train one "
                          f"with `latentlm tokenizer`)")
    from latentlm_jax.data.tokenizer import make_tokenizer

    try:
        size = make_tokenizer(config.data).vocab_size
    except (ValueError, RuntimeError, OSError) as e:
        raise ConfigError("data.tokenizer_model", " ".join(str(e).split())) from e
    if size > config.model.vocab_size:
        raise ConfigError("model.vocab_size", f"{config.model.vocab_size} is smaller than the "
                                              f"tokenizer's {size} ids: set "
                                              f"--config.model.vocab_size={size} (or more)")


def _read_json(path: Any, field: str) -> dict[str, Any]:
    try:
        value = json.loads(paths.read_text(path))
    except (OSError, ValueError) as e:
        raise ConfigError(field, f"cannot read {paths.as_str(path)}: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(field, f"{paths.as_str(path)} is not a JSON object")
    return value


def check_latents(config: mlc.ConfigDict, shards: list[str]) -> None:
    """Per enabled latent modality: the encoded latents' dim and length (``stats-<m>.json`` beside
    the shards) match ``model.<m>_latent_dim`` and fit ``data.seq_len`` and the diffusion head's
    slots per row (``data/target_capacity.check_span_budget``); a σ-VAE workdir that is
    named is a σ-VAE run of that modality with that latent dim and a checkpoint."""
    d = config.data
    stats_root = d.latent_stats_dir or (str(paths.resolve(shards[0]).parent) if shards else "")
    for modality, dim_field in LATENT_DIM_FIELDS.items():
        dim = int(config.model[dim_field])
        if dim <= 0:
            continue
        name = MODALITY_NAMES[modality]
        stats_path = paths.join(stats_root, f"stats-{name}.json") if stats_root else None
        if stats_path is not None and paths.exists(stats_path):
            stats = _read_json(stats_path, "data.latent_stats_dir")
            encoded = stats.get("latent_dim")
            if encoded is not None and int(encoded) != dim:
                raise ConfigError(f"model.{dim_field}",
                                  f"{dim}, but the {name} latents in {stats_root} have dim "
                                  f"{encoded}: set --config.model.{dim_field}={encoded}")
            length = stats.get("sequence_length")
            if length is not None and d.seq_len < int(length) + SPAN_OVERHEAD:
                raise ConfigError("data.seq_len",
                                  f"{d.seq_len} cannot hold one {name} span of {length} latents "
                                  f"plus {SPAN_OVERHEAD} tokens: set --config.data.seq_len="
                                  f"{int(length) + SPAN_OVERHEAD} or more")
            if length is not None:  # a span longer than the diffusion head's slots per row
                check_span_budget(config, {modality: int(length)})
        vae_workdir = d[f"{name}_vae_workdir"]
        if vae_workdir:
            check_vae_workdir(vae_workdir, modality, dim)


def check_vae_workdir(workdir: str, modality: int, dim: int) -> None:
    """``workdir`` is a trained σ-VAE run of ``modality`` whose latents have ``dim`` dims."""
    name = MODALITY_NAMES[modality]
    field = f"data.{name}_vae_workdir"
    config_path = paths.join(workdir, "config.json")
    if not paths.is_file(config_path):
        what = "does not exist" if not paths.exists(workdir) else "holds no config.json"
        raise ConfigError(field, f"{workdir} {what}: name the σ-VAE run that encoded the "
                                 f"{name} latents")
    run = _read_json(config_path, field)
    task = run.get("task", "lm")
    if task != VAE_TASKS[modality]:
        raise ConfigError(field, f"{workdir} is a {task!r} run, not a {VAE_TASKS[modality]!r} "
                                 f"σ-VAE: name the σ-VAE run that encoded the {name} latents")
    vae_dim = run.get("vae", {}).get(name, {}).get("latent_dim")
    if vae_dim is not None and int(vae_dim) != dim:
        raise ConfigError(f"model.{LATENT_DIM_FIELDS[modality]}",
                          f"{dim}, but the σ-VAE in {workdir} makes {vae_dim}-dim latents: set "
                          f"--config.model.{LATENT_DIM_FIELDS[modality]}={vae_dim}")
    ckpt = paths.join(workdir, "checkpoints")
    if not any(n.isdigit() for n in paths.listdir(ckpt)):
        raise ConfigError(field, f"{workdir} holds no checkpoint: train the σ-VAE first")
