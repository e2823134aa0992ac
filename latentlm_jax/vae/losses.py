"""VAE loss terms: reconstruction, σ-VAE mean penalty, plain-VAE KL, multi-resolution STFT.

Every term is a mean (over batch and elements), float32, so weights do not depend on sizes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mlc

from latentlm_jax.vae.stft import hann_window

# Default magnitude floor: a full-scale sine peaks at ≈ n_fft/4, so 1e-3 is ≥ 90 dB below it.
MAG_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss part of ``config.vae`` as hashable Python values (kept on the model, so
    ``Task.loss_fn(model, batch, rng)`` needs no config)."""

    kind: str = "sigma"
    beta: float = 1e-2
    kl_weight: float = 1e-4
    recon: str = "l1"
    recon_weight: float = 1.0
    stft_weight: float = 1.0
    stft_fft_sizes: tuple[int, ...] = (128, 512, 2048)
    stft_hops: tuple[int, ...] = (32, 128, 512)
    stft_floor: float = MAG_FLOOR
    adversarial: bool = False
    adv_weight: float = 0.1
    adv_start_step: int = 2000

    @classmethod
    def from_config(cls, v: mlc.ConfigDict) -> LossSettings:
        lo = v.loss
        if len(lo.stft_fft_sizes) != len(lo.stft_hops):
            raise ValueError("vae.loss.stft_fft_sizes and vae.loss.stft_hops differ in length")
        if lo.recon not in RECON_KINDS:
            raise ValueError(f"vae.loss.recon must be one of {RECON_KINDS}; got {lo.recon!r}")
        return cls(kind=v.kind, beta=float(v.beta), kl_weight=float(v.kl_weight), recon=lo.recon,
                   recon_weight=float(lo.recon_weight), stft_weight=float(lo.stft_weight),
                   stft_fft_sizes=tuple(lo.stft_fft_sizes), stft_hops=tuple(lo.stft_hops),
                   stft_floor=float(lo.stft_floor),
                   adversarial=bool(lo.adversarial), adv_weight=float(lo.adv_weight),
                   adv_start_step=int(lo.adv_start_step))


RECON_KINDS = ("l1", "l2", "l1_l2")


def reconstruction_loss(target: jax.Array, recon: jax.Array, kind: str = "l1") -> jax.Array:
    """mean |x − x̂| (``l1``), mean (x − x̂)² (``l2``) or their sum (``l1_l2``: L2's fast start
    on large errors, L1's steady pull on the small ones that blur edges)."""
    d = recon.astype(jnp.float32) - target.astype(jnp.float32)
    if kind not in RECON_KINDS:
        raise ValueError(f"reconstruction loss must be one of {RECON_KINDS}; got {kind!r}")
    out = jnp.zeros((), jnp.float32)
    if kind in ("l1", "l1_l2"):
        out = out + jnp.mean(jnp.abs(d))
    if kind in ("l2", "l1_l2"):
        out = out + jnp.mean(jnp.square(d))
    return out


def mu_penalty(mu: jax.Array) -> jax.Array:
    """σ-VAE regulariser ‖μ‖² as a mean over latent elements (multiply by β)."""
    return jnp.mean(jnp.square(mu.astype(jnp.float32)))


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(μ, e^logvar) ‖ N(0, 1)), mean over latent elements."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    return jnp.mean(0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar))


def stft_magnitude(x: jax.Array, n_fft: int, hop: int, floor: float = MAG_FLOOR) -> jax.Array:
    """sqrt(|STFT|² + floor²) of waveforms [B, T] → [B, frames, n_fft // 2 + 1]: Hann-windowed
    frames starting at 0, hop, 2·hop, … that fit wholly in the signal. The floor is smooth, not
    a max(): a max() has zero gradient below it, so a bin the decoder has silenced could never
    be switched on again by this loss."""
    t = x.shape[-1]
    if t < n_fft:
        raise ValueError(f"signal of {t} samples is shorter than n_fft={n_fft}")
    frames = 1 + (t - n_fft) // hop
    idx = jnp.arange(frames)[:, None] * hop + jnp.arange(n_fft)[None, :]
    spec = jnp.fft.rfft(x.astype(jnp.float32)[:, idx] * hann_window(n_fft), axis=-1)
    power = jnp.square(spec.real) + jnp.square(spec.imag)
    return jnp.sqrt(power + floor**2)


def stft_loss(target: jax.Array, recon: jax.Array, n_fft: int, hop: int,
              floor: float = MAG_FLOOR) -> tuple[jax.Array, jax.Array]:
    """(spectral convergence ‖S − Ŝ‖_F / ‖S‖_F averaged over examples, mean |log S − log Ŝ|)."""
    s, s_hat = stft_magnitude(target, n_fft, hop, floor), stft_magnitude(recon, n_fft, hop, floor)
    # Floored inside the sqrt: its gradient at 0 (perfect reconstruction) would be NaN.
    num = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(s - s_hat), axis=(1, 2)), 1e-12))
    den = jnp.sqrt(jnp.sum(jnp.square(s), axis=(1, 2)))
    sc = jnp.mean(num / jnp.maximum(den, 1e-6))
    log_mag = jnp.mean(jnp.abs(jnp.log(s) - jnp.log(s_hat)))
    return sc, log_mag


def multi_resolution_stft_loss(target: jax.Array, recon: jax.Array, fft_sizes: tuple[int, ...],
                               hops: tuple[int, ...], floor: float = MAG_FLOOR) -> jax.Array:
    """Mean over resolutions of spectral convergence + log-magnitude distance."""
    terms = [sum(stft_loss(target, recon, n, h, floor))
             for n, h in zip(fft_sizes, hops, strict=True)]
    return sum(terms) / len(terms)
