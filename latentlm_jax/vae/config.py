"""The latent shapes that the σ-VAE config fields (``config.vae``; defaults in
:mod:`latentlm_jax.config.vae`) imply: a 32×32 image becomes a 4×4 grid of 8-dim latents (×8
downsampling), one second of 16 kHz audio becomes 25 frames of 16-dim latents (hop 640 = STFT hop
320 × stride 2).
"""

from __future__ import annotations

import math

import ml_collections as mlc


def hop_length(v: mlc.ConfigDict) -> int:
    """Audio samples per latent frame: (stft_hop or patch_size) · the product of the strides."""
    au = v.audio
    base = au.stft_hop if au.representation == "stft" else au.patch_size
    return base * math.prod(au.strides)


def image_levels(v: mlc.ConfigDict) -> int:
    """Number of stride-2 convolution stages: log2(downsample / patch_size) (2 for ×8, patch 2)."""
    d, p = v.image.downsample, v.image.patch_size
    if d < 2 or d & (d - 1) or v.image.resolution % d:
        raise ValueError(f"vae.image.downsample must be a power of two ≥ 2 dividing the resolution "
                         f"{v.image.resolution}; got {d}")
    if p < 1 or p & (p - 1) or p > d:
        raise ValueError(f"vae.image.patch_size must be a power of two ≤ downsample={d}; got {p}")
    return int(math.log2(d // p))


def per_level(values: tuple[int, ...], num_levels: int) -> tuple[int, ...]:
    """A per-level setting for ``num_levels`` levels; a shorter tuple repeats its last value."""
    return tuple(int(values[min(i, len(values) - 1)]) for i in range(num_levels))


def image_latent_shape(v: mlc.ConfigDict) -> tuple[int, int, int]:
    """(height, width, latent_dim) of one image's latent grid, read in raster order."""
    side = v.image.resolution // v.image.downsample
    return side, side, v.image.latent_dim


def audio_latent_shape(v: mlc.ConfigDict) -> tuple[int, int]:
    """(frames, latent_dim) of one clip of ``num_samples``."""
    hop = hop_length(v)
    if v.audio.num_samples % hop:
        raise ValueError(f"vae.audio.num_samples={v.audio.num_samples} is not a multiple of the "
                         f"hop {hop} (vae.audio.stft_hop or patch_size · product of "
                         f"vae.audio.strides {tuple(v.audio.strides)})")
    return v.audio.num_samples // hop, v.audio.latent_dim
