"""The σ-VAE noise, drawn onto stored latents each time the pipeline reads them
(``data.latent_noise``).

``latentlm encode`` stores μ of every example, normalised as ``μ_n = (μ − mean) / std`` with the
per-dimension mean / std of the *noisy* latents ``z = μ + σ·ε`` (so the latents a LatentLM trains
on keep unit scale), and ``stats-<modality>.json`` says so: ``"stored": "mean"`` and
``"sigma_std"``, the std of the σ-VAE's per-example σ (``σ = n·vae_std/0.8``, n ~ N(0, 1): the
distribution of ``vae/codec.py:sample_sigma``). In normalised space one draw is

    z_n = μ_n + (σ / std) · ε,   σ = n · sigma_std,   n ~ N(0, 1),   ε ~ N(0, I)

``"fresh"`` draws (n, ε) for every span each time a document is made, from a generator keyed by
(``data.seed``, the document's global stream index): span k of a document takes the generator's
k-th draw, so a resumed run rebuilds bitwise the same batches while a second epoch of the same
example sees new noise (the authors' training). ``"frozen"`` keys the draw by (``data.seed``, the
record's ``index`` field, its modality): the same latents every epoch (one noisy sample per
example, what encoding stored before).

Latents stored as one sample (``"stored": "sample"``: a plain VAE's; or no ``"stored"`` at all: a
folder encoded before this format) are used as stored under ``"frozen"`` and refused under
``"fresh"`` (a :class:`ConfigError`: re-encode, or set frozen). Shards with no stats file next to
them (latents written by your own code) are used as stored, with one log line.

``data.latent_normalisation``: ``"per_dim"`` trains on the latents as stored (per-dimension
normalised). ``"scalar"`` (the authors' ONE bias b and ONE scale s per modality,
:func:`scalar_stats`) re-maps every span after its noise draw, ``z_s = (z_n·std_d + mean_d − b)/s``;
generation normalises and de-normalises with the same b, s (``generate/codecs.py``), read from the
trained run's config. Shards without a stats file cannot be re-mapped: a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.modality import MODALITY_NAMES

MODES = ("fresh", "frozen")
NORMALISATIONS = ("per_dim", "scalar")
DEFAULT_NORMALISATION = "per_dim"
STORED_MEAN, STORED_SAMPLE = "mean", "sample"
SIGMA_SCALE = 0.8  # σ = n·vae_std/0.8, as vae/codec.py (tests/test_latent_noise.py checks both)
# Stream tags: the fresh and frozen generators never share a seed tuple.
_FRESH, _FROZEN, _UNDERSTANDING = 1, 2, 3

log = logging.getLogger(__name__)


def sigma_std(vae_std: float) -> float:
    """The std of the σ-VAE's per-example σ: ``vae_std / 0.8``."""
    return float(vae_std) / SIGMA_SCALE


def sample_sigma(rng: np.random.Generator, batch: int, vae_std: float) -> np.ndarray:
    """NumPy twin of ``vae/codec.py:sample_sigma``: [batch] float32 σ = n·vae_std/0.8."""
    return (rng.standard_normal(batch) * sigma_std(vae_std)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """What one draw needs in normalised space: ``scale[d] = sigma_std / std[d]``."""

    scale: np.ndarray  # [D] float32

    def draw(self, mu_n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``μ_n + (σ/std)·ε`` for one example's ``[N, D]`` normalised μ (one σ per example)."""
        n = rng.standard_normal()
        eps = rng.standard_normal(mu_n.shape, dtype=np.float32)
        return (mu_n + (n * self.scale).astype(np.float32) * eps).astype(np.float32)


def spec_from_stats(stats: Mapping[str, Any]) -> NoiseSpec | None:
    """The draw of a stats file's latents; ``None`` for stored samples (nothing to draw)."""
    if stats.get("stored") != STORED_MEAN:
        return None
    std = np.asarray(stats["std"], np.float32)
    return NoiseSpec((np.float32(stats["sigma_std"]) / std).astype(np.float32))


def scalar_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """``stats`` with ONE bias b and ONE scale s for all latent dims (``data.latent_normalisation
    = "scalar"``, the authors' choice), exactly the mean / std of the pooled latents the per-dim
    stats describe: ``b = mean_d(mean_d)``, ``s² = mean_d(std_d² + (mean_d − b)²)`` (every dim
    has the same count). ``mean`` / ``std`` stay [D] arrays (b and s repeated), so
    ``encode_latents.normalise`` / ``denormalise`` apply them unchanged."""
    mean = np.asarray(stats["mean"], np.float64)
    std = np.asarray(stats["std"], np.float64)
    b = mean.mean()
    s = np.sqrt(np.mean(std**2 + (mean - b) ** 2))
    return {**stats, "mean": np.full(mean.shape, b, np.float32),
            "std": np.full(std.shape, s, np.float32), "normalisation": "scalar"}


def stats_for(stats: Mapping[str, Any], normalisation: str) -> dict[str, Any]:
    """The statistics latents are normalised with under ``data.latent_normalisation``."""
    if normalisation == "per_dim":
        return dict(stats)
    if normalisation == "scalar":
        return scalar_stats(stats)
    raise ConfigError("data.latent_normalisation",
                      f"must be one of {', '.join(NORMALISATIONS)}; got {normalisation!r}")


def draw_batch(mu_n: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """One draw per example of ``[B, N, D]`` normalised μ (e.g. understanding prompts)."""
    return np.stack([spec.draw(m, rng) for m in mu_n]) if len(mu_n) else mu_n


@dataclasses.dataclass(frozen=True)
class Remap:
    """Per-dim normalised latents → another normalisation: ``z·scale + shift`` ([D] each)."""

    scale: np.ndarray
    shift: np.ndarray

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * self.scale + self.shift).astype(np.float32)


def remap_from_stats(stats: Mapping[str, Any], normalisation: str) -> Remap | None:
    """``z_n`` (normalised with ``stats``) → normalised under ``normalisation``: ``None`` for
    ``"per_dim"`` (nothing to do); for ``"scalar"`` ``(z_n·std_d + mean_d − b)/s``."""
    if normalisation == "per_dim":
        return None
    target = stats_for(stats, normalisation)
    mean, std = (np.asarray(stats[k], np.float64) for k in ("mean", "std"))
    tm, ts = (np.asarray(target[k], np.float64) for k in ("mean", "std"))
    return Remap((std / ts).astype(np.float32), ((mean - tm) / ts).astype(np.float32))


def understanding_rng(seed: int, batch: int) -> np.random.Generator:
    """The generator of the noisy understanding inputs of one prompt batch (``"sample"``)."""
    return np.random.default_rng((_UNDERSTANDING, int(seed), int(batch)))


def _stats_of(directory: str) -> dict[str, Mapping[str, Any]]:
    out = {}
    for name in MODALITY_NAMES.values():
        path = paths.join(directory, f"stats-{name}.json")
        if paths.is_file(path):
            out[name] = json.loads(paths.read_text(path))
    return out


def shard_of(source: str) -> str:
    """The shard path of a record's ``source`` (``array_record:<shard>:<i>``); "" otherwise."""
    if not source.startswith("array_record:"):
        return ""
    return source.removeprefix("array_record:").rpartition(":")[0]


class LatentNoise:
    """``noise(modality, latents, source, index, rng) -> latents`` for pre-encoded records, per the
    stats file next to each record's shard. Build it with :func:`make_latent_noise`."""

    def __init__(self, mode: str, seed: int, specs: Mapping[str, Mapping[str, NoiseSpec]],
                 remaps: Mapping[str, Mapping[str, Remap]] | None = None):
        if mode not in MODES:
            raise ValueError(f"latent noise must be one of {MODES}, got {mode!r}")
        self.mode, self.seed = mode, int(seed)
        self.specs = {k: dict(v) for k, v in specs.items()}  # shard path → modality → spec
        # shard path → modality → re-map after the draw (data.latent_normalisation="scalar")
        self.remaps = {k: dict(v) for k, v in (remaps or {}).items()}

    def document_rng(self, index: int) -> np.random.Generator | None:
        """The generator of one document's fresh draws (``None`` when frozen)."""
        if self.mode != "fresh":
            return None
        return np.random.default_rng((_FRESH, self.seed, int(index)))

    def __call__(self, modality: int, latents: np.ndarray, source: str, index: int | None,
                 rng: np.random.Generator | None) -> np.ndarray:
        shard, name = shard_of(source), MODALITY_NAMES[modality]
        spec = self.specs.get(shard, {}).get(name)
        remap = self.remaps.get(shard, {}).get(name)
        if spec is not None:
            if self.mode == "frozen" or rng is None:
                key = int(index) if index is not None else zlib.crc32(source.encode())
                rng = np.random.default_rng((_FROZEN, self.seed, key, int(modality)))
            latents = spec.draw(np.asarray(latents, np.float32), rng)
        return latents if remap is None else remap(latents)


def make_latent_noise(mode: str, seed: int, shards: Sequence[str],
                      normalisation: str = DEFAULT_NORMALISATION) -> LatentNoise | None:
    """The noise (and re-map, ``data.latent_normalisation=normalisation``) of ``shards`` under
    ``data.latent_noise=mode``; ``None`` when there is nothing to do. Stored samples under
    ``"fresh"``, and shards without stats under ``"scalar"``, are a :class:`ConfigError`."""
    if mode not in MODES:
        raise ConfigError("data.latent_noise", f"must be one of {', '.join(MODES)}; got {mode!r}")
    if normalisation not in NORMALISATIONS:
        raise ConfigError("data.latent_normalisation",
                          f"must be one of {', '.join(NORMALISATIONS)}; got {normalisation!r}")
    by_dir: dict[str, dict[str, Mapping[str, Any]]] = {}
    specs: dict[str, dict[str, NoiseSpec]] = {}
    remaps: dict[str, dict[str, Remap]] = {}
    for shard in shards:
        directory = paths.as_str(paths.resolve(shard).parent)
        if directory not in by_dir:
            by_dir[directory] = _stats_of(directory)
            if not by_dir[directory] and normalisation != "per_dim":
                raise ConfigError("data.latent_normalisation",
                                  f"{normalisation!r} needs the stats-<modality>.json that "
                                  f"`latentlm encode` writes next to {shard}; there is none")
            if not by_dir[directory]:
                log.warning("no stats-<modality>.json next to %s: its latents are used as stored "
                            "(no σ-VAE noise drawn)", shard)
        specs[paths.as_str(shard)], remaps[paths.as_str(shard)] = {}, {}
        for name, stats in by_dir[directory].items():
            remap = remap_from_stats(stats, normalisation)
            if remap is not None:
                remaps[paths.as_str(shard)][name] = remap
            spec = spec_from_stats(stats)
            if spec is None and mode == "fresh":
                what = ("a plain VAE's latents (per-element σ, not stored)"
                        if stats.get("stored") == STORED_SAMPLE
                        else "latents encoded before fresh noise (no \"stored\" in its stats)")
                raise ConfigError("data.latent_noise",
                                  f"'fresh' needs stored μ, but {directory} holds one noisy {name} "
                                  f"sample per example ({what}): re-encode it with `latentlm "
                                  "encode`, or set data.latent_noise=frozen")
            if spec is not None:
                specs[paths.as_str(shard)][name] = spec
    if not any(specs.values()) and not any(remaps.values()):
        return None
    return LatentNoise(mode, seed, specs, remaps)


def latent_noise_for(data: Any, source: Any) -> LatentNoise | None:
    """The noise of the pipeline's ``source`` under the ``data`` config section (``None`` unless
    ``data.source="latents"`` reads shards that store μ)."""
    if data.source != "latents":
        return None
    return latent_noise_of(data, getattr(source, "paths", ()))


def latent_noise_of(data: Any, shards: Sequence[str]) -> LatentNoise | None:
    """:func:`make_latent_noise` of ``shards`` as the data config says (``latent_noise``,
    ``seed``, ``latent_normalisation``; configs written before a field existed get its default)."""
    return make_latent_noise(data.get("latent_noise", "fresh"), int(data.seed), shards,
                             data.get("latent_normalisation", DEFAULT_NORMALISATION))
