"""Latent-space diagnostics: how spread the latents are and how robust the decoder is to errors.

An autoregressive model never reproduces a latent exactly; the σ-VAE's point is that its decoder
has been trained on noisy latents, so moderate errors still decode to the right content. This
module measures exactly that, for any trained VAE (σ-VAE or plain):

- the per-dimension std of μ over a set of examples, and the std of sampled z;
- reconstruction quality (PSNR; SNR and log-spectral distance; on the built-in data also the
  dataset scorer's accuracy) when μ is perturbed by Gaussian noise of scale 0, 0.25, 0.5, 1, 2 ×
  the latent std (per dimension by default).

    latentlm eval --workdir runs/vae_image_tiny --workdir runs/vae_image_plain
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax.vae import samples
from latentlm_jax.vae.codec import ConvVAE
from latentlm_jax.vae.evaluation import builtin_accuracy, quality

NOISE_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0)


@nnx.jit
def _posterior(model: ConvVAE, x: jax.Array):
    return model.posterior(x)


@nnx.jit
def _decode(model: ConvVAE, z: jax.Array) -> jax.Array:
    return model.decode(z)


def _chunked(fn: Callable, model: ConvVAE, x: np.ndarray, chunk: int = 64) -> Any:
    parts = [jax.device_get(fn(model, jnp.asarray(x[i:i + chunk])))
             for i in range(0, len(x), chunk)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def latent_diagnostics(model: ConvVAE, inputs: np.ndarray,
                       score: Callable[[np.ndarray], dict[str, float]], rng: jax.Array,
                       scales: tuple[float, ...] = NOISE_SCALES,
                       per_dim: bool = True) -> dict[str, Any]:
    """Latent statistics and ``score(decode(μ + s·latent_std·ε))`` for each noise scale s.

    ``inputs`` are model inputs (images in [-1, 1], waveforms); ``score`` maps a batch of
    reconstructions to named figures. ``latent_std`` is μ's std per latent dimension
    (``per_dim``) or over all elements.
    """
    post = _chunked(_posterior, model, inputs)
    mu = post.mean
    flat = mu.reshape(-1, mu.shape[-1])
    k_z, k_noise = jax.random.split(rng)
    logvar = None if post.logvar is None else jnp.asarray(post.logvar)
    z = np.asarray(model.sample_latent(jnp.asarray(mu), k_z, logvar))
    latent_std = flat.std(axis=0) if per_dim else flat.std()
    rows = []
    for i, s in enumerate(scales):
        eps = np.asarray(jax.random.normal(jax.random.fold_in(k_noise, i), mu.shape))
        recon = _chunked(_decode, model, (mu + s * latent_std * eps).astype(np.float32))
        rows.append({"noise_scale": float(s), **score(recon)})
    return {"kind": model.kind, "mu_mean": float(flat.mean()), "mu_std": float(flat.std()),
            "mu_std_per_dim": [float(x) for x in flat.std(axis=0)],
            "z_std": float(z.std()), "rows": rows}


def image_diagnostics(model: ConvVAE, examples: list[dict[str, Any]], rng: jax.Array, *,
                      builtin: bool = True, **kwargs: Any) -> dict[str, Any]:
    """:func:`latent_diagnostics` on dataset examples, scored by PSNR and, on built-in examples
    (``builtin``: they carry ``image_attrs``), the image scorer."""
    images = np.stack([e["image"] for e in examples])

    def score(recon: np.ndarray) -> dict[str, float]:
        pixels = samples.to_uint8(recon)
        out = quality("image", images, pixels)
        if builtin:
            out["accuracy"] = builtin_accuracy("image", pixels, examples)
        return out

    return latent_diagnostics(model, samples.from_uint8(images), score, rng, **kwargs)


def audio_diagnostics(model: ConvVAE, examples: list[dict[str, Any]], rng: jax.Array, *,
                      builtin: bool = True, **kwargs: Any) -> dict[str, Any]:
    """:func:`latent_diagnostics` on dataset examples, scored by SNR, the log-spectral distance
    and, on built-in examples (they carry ``audio_pitches``), the audio scorer."""
    waves = np.stack([e["audio"] for e in examples]).astype(np.float32)

    def score(recon: np.ndarray) -> dict[str, float]:
        out = quality("audio", waves, recon)
        if builtin:
            out["accuracy"] = builtin_accuracy("audio", recon, examples)
        return out

    return latent_diagnostics(model, waves, score, rng, **kwargs)


def format_diagnostics(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one block of rows per named result of :func:`latent_diagnostics`."""
    lines = []
    for name, r in results.items():
        dims = " ".join(f"{s:.2f}" for s in r["mu_std_per_dim"])
        lines.append(f"{name} ({r['kind']}): std(mu)={r['mu_std']:.3f} "
                     f"std(z)={r['z_std']:.3f}  per-dim std(mu): {dims}")
        keys = [k for k in r["rows"][0] if k != "noise_scale"]
        lines.append("  noise×std " + " ".join(f"{k:>10}" for k in keys))
        for row in r["rows"]:
            lines.append(f"  {row['noise_scale']:>9.2f} " + " ".join(
                f"{row[k]:>10.4g}" for k in keys))
    return "\n".join(lines)
