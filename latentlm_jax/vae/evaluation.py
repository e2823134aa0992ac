"""Reconstructing examples with a σ-VAE, scoring them, and writing them as files.

Images are scored by PSNR, audio by SNR and a log-spectral distance (phase-blind). The built-in
data's scorers (``recon_correct``: does the reconstruction still show the example's shape, colour,
notes) apply only to built-in examples, whose attributes are known. Used by the trainer's eval,
``latentlm eval`` and ``latentlm reconstruct``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax.vae import samples
from latentlm_jax.vae.codec import ConvVAE


@dataclasses.dataclass
class Reconstructions:
    """``originals`` / ``recons``: uint8 images ``[N, H, W, 3]`` or float32 waves ``[N, T]``;
    ``indices``: each example's index in its source."""

    modality: str
    indices: list[int]
    originals: np.ndarray
    recons: np.ndarray
    metrics: dict[str, float]


@nnx.jit
def _reconstruct(model: ConvVAE, x: jax.Array) -> jax.Array:
    return model.decode(model.mode(x))


def reconstruct(model: ConvVAE, x: np.ndarray, chunk: int = 64) -> np.ndarray:
    """decode(mode(x)) in chunks, as NumPy."""
    return np.concatenate([np.asarray(_reconstruct(model, jnp.asarray(x[i:i + chunk])))
                           for i in range(0, len(x), chunk)])


def model_inputs(modality: str, examples: list[dict[str, Any]]) -> np.ndarray:
    """Dataset arrays → the VAE's inputs (images uint8 → [-1, 1]; waves as float32)."""
    x = np.stack([e[modality] for e in examples])
    return samples.from_uint8(x) if modality == "image" else x.astype(np.float32)


def quality(modality: str, originals: np.ndarray, recons: np.ndarray) -> dict[str, float]:
    """PSNR (uint8 images), or SNR and log-spectral distance in dB (waves)."""
    if modality == "image":
        return {"psnr": samples.psnr(originals, recons)}
    return {"snr_db": samples.snr_db(originals, recons),
            "lsd_db": samples.log_spectral_distance(originals, recons)}


def builtin_accuracy(modality: str, recons: np.ndarray, examples: list[dict[str, Any]]) -> float:
    """Fraction of reconstructions the built-in data's scorer finds correct."""
    if modality == "image":
        return samples.image_accuracy(recons, [e["image_attrs"] for e in examples])
    return samples.audio_accuracy(recons, [e["audio_pitches"] for e in examples])


def reconstruct_examples(model: ConvVAE, modality: str, examples: list[tuple[int, dict]],
                         builtin: bool) -> Reconstructions:
    """decode(μ) of ``(index, example)`` pairs, with :func:`quality` (and, on built-in
    examples, the scorer's ``recon_correct``)."""
    indices = [i for i, _ in examples]
    exs = [e for _, e in examples]
    x = model_inputs(modality, exs)
    out = reconstruct(model, x)
    if modality == "image":
        originals, recons = np.stack([e["image"] for e in exs]), samples.to_uint8(out)
    else:
        originals, recons = x, np.asarray(out, np.float32)
    metrics = quality(modality, originals, recons)
    if builtin:
        metrics["recon_correct"] = builtin_accuracy(modality, recons, exs)
    return Reconstructions(modality, indices, originals, recons, metrics)


def write_samples(out_dir: str, rec: Reconstructions, sample_rate: int, images: int = 16,
                  clips: int = 4) -> list[str]:
    """``reconstructions.png`` (the first ``images`` originals above their reconstructions), or
    ``original_<i>.wav`` / ``recon_<i>.wav`` for the first ``clips``; returns the paths."""
    if rec.modality == "image":
        n = min(images, len(rec.originals))
        path = os.path.join(out_dir, "reconstructions.png")
        samples.save_png(path, samples.image_grid([rec.originals[:n], rec.recons[:n]]))
        return [path]
    paths = []
    for i in range(min(clips, len(rec.originals))):
        for kind, wave in (("original", rec.originals[i]), ("recon", rec.recons[i])):
            paths.append(os.path.join(out_dir, f"{kind}_{i}.wav"))
            samples.save_wav(paths[-1], wave, sample_rate)
    return paths


def write_pairs(out_dir: str, rec: Reconstructions, sample_rate: int) -> list[str]:
    """``<index>_original.png`` and ``<index>_recon.png`` (``.wav`` for audio) per example,
    the index (its position in the source) zero-padded to 5 digits; returns the paths."""
    paths = []
    for index, original, recon in zip(rec.indices, rec.originals, rec.recons, strict=True):
        for kind, value in (("original", original), ("recon", recon)):
            if rec.modality == "image":
                paths.append(os.path.join(out_dir, f"{index:05d}_{kind}.png"))
                samples.save_png(paths[-1], value)
            else:
                paths.append(os.path.join(out_dir, f"{index:05d}_{kind}.wav"))
                samples.save_wav(paths[-1], value, sample_rate)
    return paths
