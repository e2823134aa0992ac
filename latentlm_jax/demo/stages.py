"""The demo's training stages (σ-VAEs, LatentLM) and its encoding stage.

Each stage leaves something that says it is complete, so an interrupted demo resumes where it
stopped: a training stage is complete when its latest checkpoint is at ``train.num_steps`` (an
unfinished one resumes from its checkpoint); the encode stage (and the generate stage,
``demo/generation.py``) writes a ``DONE`` marker (``demo/markers.py``) holding the fingerprint of
its inputs and settings, and is redone when it no longer matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.sweep import flatten
from latentlm_jax.data.encode_latents import encode_dataset, shard_name
from latentlm_jax.data.latent_noise import STORED_MEAN
from latentlm_jax.data.shapes_tones import ShapesTones
from latentlm_jax.demo.markers import clear_marker, fingerprint, marker_matches, write_marker
from latentlm_jax.demo.progress import Progress
from latentlm_jax.modality import LATENT_MODALITIES, MODALITY_NAMES
from latentlm_jax.train.checkpoint_io import latest_step, load_model, save_run_config
from latentlm_jax.train.trainer import train

Say = Callable[[str], None]
# Config fields that hold paths into the workdir: a moved workdir changes them, nothing else.
PATH_FIELDS = frozenset({"data.latent_files", "data.latent_stats_dir", "data.latents_dir",
                         *(f"data.{name}_vae_workdir" for name in MODALITY_NAMES.values())})


class StageError(ConfigError):
    """A stage cannot run (mismatching earlier output, interrupted training): one line, exit 2."""

    def __init__(self, problem: str):
        super().__init__("", problem)


# ---------------------------------------------------------------------------------- training
def config_json(config: mlc.ConfigDict) -> dict[str, Any]:
    """The config as ``config.json`` stores it (tuples as lists)."""
    return json.loads(config.to_json_best_effort())


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any],
                       ignore: frozenset[str] = PATH_FIELDS) -> list[str]:
    """``field: old → new`` for every field that differs (``ignore``d fields aside). A field the
    saved config lacks is no difference while the new value is its default: the run was made
    before the field existed, and the default keeps the behaviour it was trained with."""
    a, b = flatten(saved), flatten(new)
    defaults = flatten(config_json(base_config()))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or a.get(key) == b.get(key):
            continue
        if key not in a and key in defaults and b.get(key) == defaults[key]:
            continue
        diffs.append(f"{key}: {a.get(key, '(absent)')!r} → {b.get(key, '(absent)')!r}")
    return diffs


def check_same_config(config: mlc.ConfigDict, workdir: str, what: str) -> None:
    """Refuses to continue a run whose workdir holds a different config (other than paths)."""
    path = os.path.join(workdir, "config.json")
    if not paths.exists(path):
        return
    saved = json.loads(paths.read_text(path))
    diffs = config_differences(saved, config_json(config))
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
        raise StageError(f"{workdir} holds a {what} trained with other settings ({shown}); "
                         f"use a fresh --workdir, or delete {workdir} to retrain it")


def checkpoint_step(workdir: str) -> int | None:
    """The step of ``workdir``'s latest checkpoint (``None``: none yet)."""
    return latest_step(workdir)


def train_stage(config: mlc.ConfigDict, workdir: str, what: str, say: Say,
                devices: list | None = None) -> bool:
    """Trains ``config`` into ``workdir`` unless its latest checkpoint is already at
    ``train.num_steps``. Returns whether it was reused. An earlier, unfinished run resumes from
    its checkpoint (the trainer does that)."""
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
    # "stored": latents written before the σ-VAE noise moved to the pipeline (one noisy sample
    # per example) no longer match, so an old demo workdir re-encodes (docs/vae.md "Fresh noise")
    key = encode_key(vaes, num_examples=num_examples, batch_size=batch_size, seed=seed,
                     stored=STORED_MEAN)
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
        saved = json.loads(paths.read_text(os.path.join(vae_dir, "config.json")))
        parts[modality] = {"config": fingerprint(saved), "step": checkpoint_step(vae_dir)}
    return fingerprint({"vaes": parts, **settings})


def latent_files(out_dir: str) -> tuple[str, ...]:
    """The (image, audio) shards ``encode_stage`` writes, as absolute paths."""
    return tuple(str(paths.join(out_dir, shard_name(MODALITY_NAMES[m], 0, 1)))
                 for m in LATENT_MODALITIES)
