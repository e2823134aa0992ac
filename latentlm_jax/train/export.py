"""``latentlm export``: a trained run → a self-contained directory for inference (docs/export.md).

    OUT/config.json      the run's config; the files below named relative to OUT
    OUT/export.json      source workdir and step, which weights (ema | raw), dtype, carried files
    OUT/params/          Orbax checkpoint of the weights alone (no optimizer state)
    OUT/tokenizer.model  the SentencePiece model (data.tokenizer = sentencepiece only)
    OUT/image_vae/       a LatentLM's σ-VAEs, each exported the same way (same dtype, latest
    OUT/audio_vae/         step, EMA when kept: what generate decodes with)
    OUT/latent_stats/    stats-<modality>.json: the LatentLM's latent normalisation

Weights are restored sharded onto the devices (``inference_mesh``) and saved from there: each
process writes its own shards; config and metadata are written by process 0 only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import orbax.checkpoint as ocp

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.modality import MODALITY_NAMES, latent_dims
from latentlm_jax.train.checkpoint_io import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    PARAMS_DIR,
    export_info,
    inference_mesh,
    latest_step,
    load_params,
    load_run_config,
    save_run_config,
)

DTYPES = ("float32", "bfloat16")
TOKENIZER_FILE = "tokenizer.model"
STATS_DIR = "latent_stats"


@dataclasses.dataclass
class Exported:
    out: str
    step: int
    weights: str  # "ema" | "raw"
    dtype: str
    num_params: int
    bytes: int  # of the weights, in ``dtype``
    parts: list[str]  # what else was written: the tokenizer, σ-VAEs, statistics


def export_run(workdir: str, out: str, *, step: int | None = None, use_ema: bool | None = True,
               dtype: str | None = None, devices: list | None = None) -> Exported:
    """Writes the export of ``workdir`` (a training run, or itself an export) into ``out``, a
    new or empty directory; every process calls it (each saves its own shards).

    ``use_ema``: True = EMA weights when the run kept them, None = EMA or an error, False = raw.
    ``dtype``: the weights' dtype (default: as the run stores them)."""
    if not paths.exists(paths.join(workdir, "config.json")):
        what = "does not exist" if not paths.exists(workdir) else "holds no config.json"
        raise ConfigError("", f"--workdir {workdir} {what}: is it a latentlm workdir?")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError("", f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    target = paths.resolve(out)
    if paths.exists(target) and (not paths.is_dir(target) or paths.listdir(target)):
        raise ConfigError("", f"--out {out} exists and is not empty; export into a new directory")
    if jax.process_count() > 1:  # every process has looked before any writes
        ocp.multihost.sync_global_processes("latentlm_export_checked")
    return _export(workdir, target, step=step, use_ema=use_ema, dtype=dtype, devices=devices)


def _export(workdir: str, target: Any, *, step: int | None, use_ema: bool | None,
            dtype: str | None, devices: list | None) -> Exported:
    config = load_run_config(workdir)
    files, vaes = _carried_files(config)  # checked before anything is written
    mesh = inference_mesh(config, jax.devices() if devices is None else devices)
    _, params, _, step, weights = load_params(
        workdir, step=step, use_ema=use_ema, config=config, mesh=mesh,
        dtype=None if dtype is None else jnp.dtype(dtype))
    leaves = jax.tree.leaves(params)
    dtypes = sorted({x.dtype.name for x in leaves})
    stored = dtypes[0] if len(dtypes) == 1 else "mixed"
    paths.makedirs(target)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        ckptr.save(target / PARAMS_DIR, args=ocp.args.StandardSave(params))
    parts: list[str] = []
    for field, (rel, source) in files.items():  # σ-VAEs: every process takes part in the saves
        if field in vaes:
            _export(source, target / rel, step=None, use_ema=True, dtype=dtype,
                    devices=devices)
            parts.append(f"{rel}/ (σ-VAE {source})")
    if jax.process_index() == 0:
        for field, (rel, source) in files.items():
            if field == "data.tokenizer_model":
                paths.copy_file(source, target / rel)
                parts.append(f"{rel} (SentencePiece)")
            elif field == "data.latent_stats_dir":
                for name in _latent_names(config):
                    paths.copy_file(paths.join(source, f"stats-{name}.json"),
                                    target / rel / f"stats-{name}.json")
                parts.append(f"{rel}/ (latent statistics)")
        _write_config(config, target, {f: rel for f, (rel, _) in files.items()})
        info = {"format": EXPORT_FORMAT, "source_workdir": os.fspath(paths.resolve(workdir)),
                "step": step, "weights": weights,
                "dtype": stored,
                "files": {f: rel for f, (rel, _) in files.items()}}
        source_info = export_info(workdir)
        if source_info is not None:  # an export of an export names the run it came from
            info["source_workdir"] = source_info["source_workdir"]
        # written last: a directory without it is no export (an interrupted one fails to load)
        paths.write_text(target / EXPORT_FILE, json.dumps(info, indent=2) + "\n")
    return Exported(os.fspath(target), step, weights, stored, sum(x.size for x in leaves),
                    sum(x.nbytes for x in leaves), parts)


def _latent_names(config: mlc.ConfigDict) -> list[str]:
    return [MODALITY_NAMES[m] for m in latent_dims(config.model)] if config.task == "lm" else []


def _carried_files(config: mlc.ConfigDict) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """``{config field: (name inside the export, source path)}`` of every file the model needs
    at inference, and which of them are σ-VAE runs; a one-line error for one that is missing."""
    d = config.data
    files: dict[str, tuple[str, str]] = {}
    if config.task == "lm" and d.tokenizer == "sentencepiece":
        if not d.tokenizer_model or not paths.exists(d.tokenizer_model):
            raise ConfigError("data.tokenizer_model", f"{d.tokenizer_model!r} not found: the "
                                                      "export must carry the SentencePiece model")
        files["data.tokenizer_model"] = (TOKENIZER_FILE, d.tokenizer_model)
    names = _latent_names(config)
    vaes = set()
    for name in names:
        field = f"data.{name}_vae_workdir"
        source = d[f"{name}_vae_workdir"]
        if not source or not paths.exists(paths.join(source, "config.json")) \
                or latest_step(source) is None:
            raise ConfigError(field, f"{source!r} is not a σ-VAE workdir: the export must carry "
                                     f"the σ-VAE that decodes {name} latents")
        files[field] = (f"{name}_vae", source)
        vaes.add(field)
    if names:
        stats = d.latent_stats_dir or (os.path.dirname(d.latent_files[0]) if d.latent_files
                                       else "")
        for name in names:
            if not stats or not paths.exists(paths.join(stats, f"stats-{name}.json")):
                raise ConfigError("data.latent_stats_dir", f"{stats!r} holds no stats-{name}"
                                                           ".json: the export must carry it")
        files["data.latent_stats_dir"] = (STATS_DIR, stats)
    return files, vaes


def _write_config(config: mlc.ConfigDict, target: Any, files: dict[str, str]) -> None:
    """The run's config with the carried files named relative to the export
    (``load_run_config`` turns them back into paths inside wherever the export then lives)."""
    config = mlc.ConfigDict(config.to_dict())
    for field, rel in files.items():
        section, key = field.split(".")
        config[section][key] = rel
    save_run_config(config, os.fspath(target))
