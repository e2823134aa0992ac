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


def draw_batch(mu_n: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """One draw per example of ``[B, N, D]`` normalised μ (e.g. understanding prompts)."""
    return np.stack([spec.draw(m, rng) for m in mu_n]) if len(mu_n) else mu_n


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

    def __init__(self, mode: str, seed: int, specs: Mapping[str, Mapping[str, NoiseSpec]]):
        if mode not in MODES:
            raise ValueError(f"latent noise must be one of {MODES}, got {mode!r}")
        self.mode, self.seed = mode, int(seed)
        self.specs = {k: dict(v) for k, v in specs.items()}  # shard path → modality → spec

    def document_rng(self, index: int) -> np.random.Generator | None:
        """The generator of one document's fresh draws (``None`` when frozen)."""
        if self.mode != "fresh":
            return None
        return np.random.default_rng((_FRESH, self.seed, int(index)))

    def __call__(self, modality: int, latents: np.ndarray, source: str, index: int | None,
                 rng: np.random.Generator | None) -> np.ndarray:
        spec = self.specs.get(shard_of(source), {}).get(MODALITY_NAMES[modality])
        if spec is None:
            return latents
        if self.mode == "frozen" or rng is None:
            key = int(index) if index is not None else zlib.crc32(source.encode())
            rng = np.random.default_rng((_FROZEN, self.seed, key, int(modality)))
        return spec.draw(np.asarray(latents, np.float32), rng)


def make_latent_noise(mode: str, seed: int, shards: Sequence[str]) -> LatentNoise | None:
    """The noise of ``shards`` under ``data.latent_noise=mode``; ``None`` when none of them stores
    μ. Stored samples under ``"fresh"`` are a :class:`ConfigError` (module docstring)."""
    if mode not in MODES:
        raise ConfigError("data.latent_noise", f"must be one of {', '.join(MODES)}; got {mode!r}")
    by_dir: dict[str, dict[str, Mapping[str, Any]]] = {}
    specs: dict[str, dict[str, NoiseSpec]] = {}
    for shard in shards:
        directory = paths.as_str(paths.resolve(shard).parent)
        if directory not in by_dir:
            by_dir[directory] = _stats_of(directory)
            if not by_dir[directory]:
                log.warning("no stats-<modality>.json next to %s: its latents are used as stored "
                            "(no σ-VAE noise drawn)", shard)
        specs[paths.as_str(shard)] = {}
        for name, stats in by_dir[directory].items():
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
    if not any(specs.values()):
        return None
    return LatentNoise(mode, seed, specs)


def latent_noise_for(data: Any, source: Any) -> LatentNoise | None:
    """The noise of the pipeline's ``source`` under the ``data`` config section (``None`` unless
    ``data.source="latents"`` reads shards that store μ)."""
    if data.source != "latents":
        return None
    return make_latent_noise(data.get("latent_noise", "fresh"), int(data.seed),
                             getattr(source, "paths", ()))
