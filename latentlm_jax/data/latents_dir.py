"""A folder of encoded latents and its descriptor, ``latents.json``: from encode to training.

``latentlm encode --out DIR`` writes the shards and ``stats-<modality>.json`` and records, per
modality, what a LatentLM needs to train on them and to decode what it generates::

    {"format": 1, "modalities": {"image": {
        "shards": ["latents-image-00000-of-00001.array_record"], "stats": "stats-image.json",
        "latent_dim": 8, "sequence_length": 16, "grid": [4, 4, 8], "count": 1000,
        "captioned": 1000, "caption_field": "text", "without_modality": 0, "skipped": {},
        "vae_workdir": "/abs/runs/vae_image", "vae_step": 2000, "source": "manifest /abs/m.jsonl",
        "media": {"image_resolution": 32}, "seed": 0, "stored": "mean"}}}

``stored``: what the records hold, the σ-VAE's μ (``"mean"``: the pipeline draws the noise,
``data.latent_noise``) or one noisy sample (``"sample"``: a plain VAE's; absent in folders
encoded before fresh noise; docs/vae.md "Fresh noise").

Encoding the other modality into the same DIR adds its entry (re-encoding one replaces it).
Shard and stats names are relative to DIR (the folder can move); the σ-VAE workdir is absolute.

:func:`resolve_latents_dir` turns ``data.latents_dir`` into the fields the pipeline and
``latentlm generate`` read (``latent_files``, ``latent_stats_dir``, the σ-VAE workdirs, latent
dims left at 0); ``latentlm train`` calls it once and saves the result in the run's config.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.latent_noise import STORED_SAMPLE, latent_noise_of
from latentlm_jax.modality import LATENT_DIM_FIELDS, LATENT_MODALITIES, MODALITY_NAMES

DESCRIPTOR = "latents.json"
FORMAT = 1
# <bos> <boX> … <eoX> <eos>: tokens around one span of latents, besides its caption
SPAN_OVERHEAD = 4


def descriptor_path(latents_dir: str) -> str:
    return str(paths.join(latents_dir, DESCRIPTOR))


def read_descriptor(latents_dir: str) -> dict[str, Any]:
    """The descriptor of ``latents_dir``; a :class:`ConfigError` naming ``data.latents_dir``
    when there is none or it cannot be read."""
    path = descriptor_path(latents_dir)
    if not paths.is_file(path):
        raise ConfigError("data.latents_dir", f"no {DESCRIPTOR} in {latents_dir} (write one with "
                                              f"`latentlm encode --vae-workdir W --out "
                                              f"{latents_dir}`)")
    try:
        desc = json.loads(paths.read_text(path))
        modalities = desc["modalities"]
        if desc.get("format") != FORMAT or not isinstance(modalities, dict):
            raise ValueError(f"format {desc.get('format')!r}, expected {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError("data.latents_dir", f"cannot read {path}: {e}") from e
    return desc


@contextlib.contextmanager
def _locked(latents_dir: str) -> Iterator[None]:
    """Two encodes (image, audio) into one folder at once must not lose each other's entry. A
    bucket has no file locks: there encode one modality after the other (docs/storage.md)."""
    paths.makedirs(latents_dir)
    if paths.is_url(latents_dir):
        yield
        return
    with paths.open_file(paths.join(latents_dir, ".latents.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_descriptor(latents_dir: str, modality: str, entry: Mapping[str, Any]) -> str:
    """Adds (or replaces) ``modality``'s entry in ``latents_dir/latents.json``; returns its path."""
    path = descriptor_path(latents_dir)
    with _locked(latents_dir):
        desc = {"format": FORMAT, "modalities": {}}
        if paths.is_file(path):
            desc = read_descriptor(latents_dir)
        desc["modalities"][modality] = dict(entry)
        desc["modalities"] = dict(sorted(desc["modalities"].items()))
        paths.write_text(path, json.dumps(desc, indent=1) + "\n")
    return path


def descriptor_entry(stats: Mapping[str, Any], *, grid: tuple[int, ...], vae_workdir: str,
                     vae_step: int, caption_field: str, source: str, media: Mapping[str, int],
                     seed: int) -> dict[str, Any]:
    """One modality's entry, from the stats :func:`encode_dataset` returned and the σ-VAE run."""
    modality = stats["modality"]
    return {
        "shards": list(stats["shards"]),
        "stats": f"stats-{modality}.json",
        "latent_dim": int(stats["latent_dim"]),
        "sequence_length": int(stats["sequence_length"]),
        "grid": [int(g) for g in grid],
        "count": int(stats["encoded"]),
        "captioned": int(stats["captioned"]),
        "caption_field": caption_field,
        "without_modality": int(stats["without_modality"]),
        "skipped": dict(stats["skipped"]),
        "vae_workdir": paths.as_str(vae_workdir),
        "vae_step": int(vae_step),
        "source": source,
        "media": dict(media),
        "seed": int(seed),
        "stored": stats.get("stored", STORED_SAMPLE),
    }


def _fill(config: mlc.ConfigDict, field: str, value: Any, path: str) -> None:
    """Sets ``config.<field>`` to ``value`` when empty; refuses a different value already set."""
    group, key = field.split(".")
    current = config[group][key]
    if not current:
        config[group][key] = value
        return
    same = (tuple(paths.as_str(p) for p in current) == tuple(value)
            if isinstance(value, tuple) else paths.as_str(current) == value)
    if not same:
        raise ConfigError(field, f"{current!r} disagrees with {path} ({value!r}); leave it empty "
                                 "when data.latents_dir is set")


def resolve_latents_dir(config: mlc.ConfigDict) -> dict[str, Any] | None:
    """Fills ``config`` (in place) from ``data.latents_dir``'s descriptor; returns the descriptor
    (``None`` when the field is off). Idempotent: a resolved config passes unchanged.

    Per modality in the descriptor: ``model.<modality>_latent_dim`` (0 → the encoded dim; another
    value is a config error naming both), the shards into ``data.latent_files`` and the σ-VAE
    workdir into ``data.<modality>_vae_workdir`` (kept when set: a moved workdir). A modality the
    model enables but the folder lacks, a σ-VAE whose latest checkpoint is not the one that
    encoded, and a ``data.seq_len`` too short for one span are config errors too.
    """
    d = config.data
    if not d.latents_dir:
        return None
    root = paths.as_str(d.latents_dir)
    desc = read_descriptor(root)
    path = descriptor_path(root)
    entries = desc["modalities"]
    files: list[str] = []
    for m in LATENT_MODALITIES:
        name, field = MODALITY_NAMES[m], LATENT_DIM_FIELDS[m]
        entry = entries.get(name)
        dim = int(config.model[field])
        if entry is None:
            if dim > 0:
                raise ConfigError(f"model.{field}", f"{dim}, but {path} has no {name} latents "
                                                    f"(encode some into {root}, or set it to 0)")
            continue
        if dim == 0:
            config.model[field] = int(entry["latent_dim"])
        elif dim != entry["latent_dim"]:
            raise ConfigError(f"model.{field}", f"{dim} disagrees with the {name} latents in "
                                                f"{path}, which have dim {entry['latent_dim']} "
                                                f"(set it to {entry['latent_dim']}, or to 0 to "
                                                "take it from there)")
        files.extend(str(paths.join(root, s)) for s in entry["shards"])
        for name_ in (entry["stats"], *entry["shards"]):
            if not paths.is_file(paths.join(root, name_)):
                raise ConfigError("data.latents_dir", f"{path} names {name_}, which is not in "
                                                      f"{root}")
        vae_field = f"{name}_vae_workdir"
        if not d[vae_field]:
            d[vae_field] = entry["vae_workdir"]
        _check_vae(d[vae_field], entry, name)
        need = int(entry["sequence_length"]) + SPAN_OVERHEAD
        if d.seq_len < need:
            raise ConfigError("data.seq_len", f"{d.seq_len} cannot hold one {name} span of "
                                              f"{entry['sequence_length']} latents plus "
                                              f"{SPAN_OVERHEAD} tokens (need ≥ {need})")
    if not files:
        raise ConfigError("data.latents_dir", f"{path} lists no latents")
    # stored samples under data.latent_noise=fresh (or no stats under
    # data.latent_normalisation=scalar): one line now, before anything is written
    latent_noise_of(d, files)
    _fill(config, "data.latent_files", tuple(files), path)
    _fill(config, "data.latent_stats_dir", root, path)
    return desc


def _check_vae(workdir: str, entry: Mapping[str, Any], name: str) -> None:
    """The σ-VAE that decodes must be the one that encoded: same run, same checkpoint step."""
    from latentlm_jax.train.checkpoint_io import latest_step

    field = f"data.{name}_vae_workdir"
    if not paths.is_file(paths.join(workdir, "config.json")):
        raise ConfigError(field, f"{workdir} is not a σ-VAE workdir (no config.json); the "
                                 f"{name} latents were encoded by {entry['vae_workdir']}")
    step = latest_step(workdir)
    if step != entry["vae_step"]:
        raise ConfigError(field, f"the σ-VAE in {workdir} is at step {step}, but the {name} "
                                 f"latents were encoded at step {entry['vae_step']}: encode "
                                 "again with it")
