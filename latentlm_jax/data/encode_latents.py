"""Encoding a dataset with a trained σ-VAE into normalised latent sequences (ArrayRecord).

For every example: μ = encoder(x), flattened to a sequence (images in raster order) and stored
normalised, ``(μ − mean) / std``, with the per-dimension mean/std of the *noisy* latents
z = μ + σ·ε (one σ per example): mean = E[μ], std² = Var[μ] + E[σ²], exactly (no sampled
estimate). The σ-VAE noise itself is drawn by the data pipeline each time a latent is read
(``data.latent_noise``, :mod:`latentlm_jax.data.latent_noise`), so the language model trains on
fresh noisy latents. A plain VAE (per-element σ) stores one sample z instead (``"stored":
"sample"``), normalised with the statistics of those samples.
Each JAX process encodes its own shard ``i::P`` and writes its own file; the statistics are
combined over processes. ``stats-<modality>.json`` holds what generation needs to de-normalise.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax import paths
from latentlm_jax.data.array_record_source import write_latents
from latentlm_jax.data.bad_input import (
    METRIC_PREFIX,
    REASONS,
    BadInput,
    BadInputPolicy,
    NotApplicable,
)
from latentlm_jax.data.latent_noise import STORED_MEAN, STORED_SAMPLE, sigma_std
from latentlm_jax.modality import MODALITY_NAMES, VAE_TASKS

# σ-VAE task → (the example field it encodes, the built-in data's caption field for it)
MODALITY_KEYS = {task: (MODALITY_NAMES[m], f"{MODALITY_NAMES[m]}_caption")
                 for m, task in VAE_TASKS.items()}


class MediaExamples:
    """Any example source (built-in, manifest, TFDS) as ``{modality, caption_key}`` examples.

    The built-in data names its captions ``image_caption`` / ``audio_caption``; manifests and
    TFDS give one ``text``. An example without this modality (a text-only or audio-only
    manifest line when encoding images) raises :class:`NotApplicable` ``no_<modality>``, as a
    source opened with ``only=<modality>`` does itself: not a bad input, counted apart. The
    source's unusable examples raise :class:`BadInput`, which :func:`encode_dataset` hands to
    ``data.bad_input``'s policy.

    ``captions``: the same examples read for their text alone (a source opened with
    ``only="text"``, when ``source`` reads the media alone); an example without text is
    uncaptioned, one with a bad text (empty, invalid UTF-8) is bad input.
    """

    def __init__(self, source: Sequence[dict[str, Any]], task: str,
                 captions: Sequence[dict[str, Any]] | None = None):
        if captions is not None and len(captions) != len(source):
            raise ValueError(f"{len(captions)} captions for {len(source)} examples")
        self.source = source
        self.captions = captions
        self.modality, self.caption_key = MODALITY_KEYS[task]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.source[index]
        if ex.get(self.modality) is None:
            raise NotApplicable(f"no_{self.modality}",
                                f"example {index} has no {self.modality}")
        caption = ex.get(self.caption_key) or ex.get("text") or ""
        if self.captions is not None:
            try:
                caption = self.captions[index]["text"] or ""
            except NotApplicable:
                caption = ""
        out = {self.modality: ex[self.modality], self.caption_key: caption}
        if ex.get("label") is not None:  # data.label: carried into the records
            out["label"] = ex["label"]
        return out


def model_input(modality: str, x: np.ndarray) -> jax.Array:
    """Dataset arrays → the VAE's input range (images uint8 → [-1, 1]; audio as is)."""
    if modality == "image":
        return jnp.asarray(x, jnp.float32) / 127.5 - 1.0
    return jnp.asarray(x, jnp.float32)


def to_sequence(z: np.ndarray) -> np.ndarray:
    """[B, *grid, D] → [B, N, D] (raster order for images, time order for audio)."""
    return z.reshape(z.shape[0], -1, z.shape[-1])


@nnx.jit
def _encode(model, x, key):
    post = model.posterior(x)
    return post.mean, model.sample_latent(post.mean, key, post.logvar)


def encode_examples(model, modality: str, xs: np.ndarray, key: jax.Array,
                    noisy: bool = True) -> np.ndarray:
    """[B, N, D] latent sequences (a sample z when ``noisy``, else μ), unnormalised."""
    mu, z = _encode(model, model_input(modality, xs), key)
    return to_sequence(np.asarray(z if noisy else mu))


def encode_dataset(model, task: str, dataset: Sequence[dict[str, Any]], out_dir: str, *,
                   num_examples: int, batch_size: int = 64, seed: int = 0,
                   process_index: int | None = None, process_count: int | None = None,
                   progress: Callable[[int, int, float], None] | None = None,
                   bad_input: str = "skip") -> dict[str, Any]:
    """Encodes examples ``process_index::process_count`` of ``dataset[:num_examples]``; writes
    ``latents-<modality>-<i>-of-<P>.array_record`` and (process 0) ``stats-<modality>.json``.

    An example that raises :class:`BadInput` goes to a ``BadInputPolicy(bad_input)``: under
    ``"skip"`` it is counted by reason (``stats["skipped"]``, summed over processes) and the first
    of each reason is logged with its file and line; under ``"error"`` the policy's one-line
    ``DataError`` stops the encoding. Examples without the modality are counted in
    ``stats["without_modality"]``. ``stats["encoded"]`` counts all processes' sequences.
    """
    modality, caption_key = MODALITY_KEYS[task]
    kind = getattr(model, "kind", "sigma")
    stored = STORED_SAMPLE if kind == "plain" else STORED_MEAN  # docs/vae.md "Fresh noise"
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    policy = BadInputPolicy(bad_input)
    indices = list(range(pi, num_examples, pc))
    key = jax.random.key(seed)
    seqs, captions, kept, labels = [], [], [], []
    without = 0
    t0 = time.perf_counter()
    for start in range(0, len(indices), batch_size):
        examples = []
        for i in indices[start:start + batch_size]:
            try:
                examples.append((i, dataset[i]))
            except NotApplicable:  # before BadInput, its base class
                without += 1
            except BadInput as e:
                policy.handle(e, e.where or f"example:{i}")  # DataError under "error"
        if examples:
            xs = np.stack([ex[modality] for _, ex in examples])
            z = encode_examples(model, modality, xs, jax.random.fold_in(key, start),
                                noisy=stored == STORED_SAMPLE)
            seqs.extend(z)
            captions.extend(ex[caption_key] for _, ex in examples)
            kept.extend(i for i, _ in examples)
            # the class label (data.label; the built-in data's image class) of image examples
            labels.extend(ex.get("label") if modality == "image" else None for _, ex in examples)
        if progress is not None:
            progress(min(start + batch_size, len(indices)), len(indices),
                     time.perf_counter() - t0)
    skipped = {k.removeprefix(METRIC_PREFIX): n for k, n in policy.counts().items()}
    if not seqs:
        raise ValueError(f"none of the {len(indices)} examples has a usable {modality} "
                         f"({without} without one; skipped: {skipped})")
    stacked = np.stack(seqs).astype(np.float64)  # [n, N, D]
    flat = stacked.reshape(-1, stacked.shape[-1])
    sums = np.stack([flat.sum(0), (flat**2).sum(0), np.full(flat.shape[1], len(flat))])
    counts = _counts_vector(len(kept), sum(1 for c in captions if c), without, skipped)
    if pc > 1:
        from jax.experimental import multihost_utils

        sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
    count = sums[2]
    mean = sums[0] / count
    var = sums[1] / count - mean**2  # of what is stored: μ (σ-VAE) or one sample (plain VAE)
    noise_std = sigma_std(float(getattr(model, "std", 0.0))) if stored == STORED_MEAN else 0.0
    std = np.sqrt(np.maximum(var + noise_std**2, 1e-12))  # of z = μ + σ·ε: + E[σ²]
    normalised = ((stacked - mean) / std).astype(np.float32)
    paths.makedirs(out_dir)
    write_shard(paths.join(out_dir, shard_name(modality, pi, pc)),
                ({"latents": z, "caption": c, "modality": modality, "index": int(i),
                  **({} if k is None else {"label": int(k)})}  # a class label when it has one
                 for z, c, i, k in zip(normalised, captions, kept, labels, strict=True)))
    encoded, captioned, without_all, skipped_all = _from_counts_vector(counts)
    stats = {"modality": modality, "mean": mean.tolist(), "std": std.tolist(),
             "latent_dim": int(stacked.shape[-1]), "sequence_length": int(stacked.shape[1]),
             "num_examples": num_examples, "encoded": encoded, "captioned": captioned,
             "without_modality": without_all, "skipped": skipped_all,
             "vae_kind": kind, "vae_std": float(getattr(model, "std", 0.0)),
             # what the records hold, and the std of σ a fresh draw needs (data/latent_noise.py)
             "stored": stored, "sigma_std": noise_std,
             "shards": [shard_name(modality, i, pc) for i in range(pc)]}
    if pi == 0:
        paths.write_text(paths.join(out_dir, f"stats-{modality}.json"),
                         json.dumps(stats, indent=1))
    return stats


def write_shard(path: paths.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Writes one latent shard atomically: locally under a temporary name in the same folder,
    renamed into place once complete (an object in a bucket appears only once uploaded whole).
    A killed encode never leaves a truncated shard under the name a rerun or the trainer reads,
    and the stats file (written atomically after it) never describes a shard that is not there."""
    if paths.is_url(path):
        return write_latents(path, records)
    final = paths.resolve(path)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        n = write_latents(tmp, records)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def shard_name(modality: str, process_index: int, process_count: int) -> str:
    """The file one process writes: ``latents-<modality>-<i>-of-<P>.array_record``."""
    return f"latents-{modality}-{process_index:05d}-of-{process_count:05d}.array_record"


# Counts summed over processes travel as one vector: encoded, captioned, without the modality,
# then the skips per known reason (any other reason under "other").
_SKIP_SLOTS = (*REASONS, "other")


def _counts_vector(encoded: int, captioned: int, without: int,
                   skipped: dict[str, int]) -> np.ndarray:
    v = np.zeros(3 + len(_SKIP_SLOTS), np.int64)
    v[:3] = encoded, captioned, without
    for reason, n in skipped.items():
        slot = reason if reason in REASONS else "other"
        v[3 + _SKIP_SLOTS.index(slot)] += n
    return v


def _from_counts_vector(v: np.ndarray) -> tuple[int, int, int, dict[str, int]]:
    skipped = {r: int(n) for r, n in zip(_SKIP_SLOTS, v[3:], strict=True) if n}
    return int(v[0]), int(v[1]), int(v[2]), skipped


def load_stats(out_dir: str, modality: str) -> dict[str, Any]:
    stats = json.loads(paths.read_text(paths.join(out_dir, f"stats-{modality}.json")))
    stats["mean"] = np.asarray(stats["mean"], np.float32)
    stats["std"] = np.asarray(stats["std"], np.float32)
    return stats


def normalise(z: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    return ((z - stats["mean"]) / stats["std"]).astype(np.float32)


def denormalise(z: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    return (z * stats["std"] + stats["mean"]).astype(np.float32)
