"""Between latent sequences and media: the σ-VAEs and latent statistics a LatentLM run was
trained with (``config.data.{image,audio}_vae_workdir``, ``latent_stats_dir``)."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.encode_latents import denormalise, encode_examples, load_stats, normalise
from latentlm_jax.models.latentlm import IMAGE
from latentlm_jax.vae.samples import to_uint8


def stats_dir(config: mlc.ConfigDict) -> str:
    d = config.data
    if d.latent_stats_dir:
        return d.latent_stats_dir
    if d.latent_files:
        return os.path.dirname(os.path.abspath(d.latent_files[0]))
    raise ConfigError("data.latent_stats_dir", "unknown: set it (or data.latent_files)")


class MediaCodec:
    """One modality's σ-VAE + latent normalisation: media ↔ normalised latent sequences."""

    def __init__(self, config: mlc.ConfigDict, modality: int):
        from latentlm_jax.train.checkpoint_io import load_model

        self.modality = modality
        self.name = "image" if modality == IMAGE else "audio"
        workdir = config.data.image_vae_workdir if modality == IMAGE else \
            config.data.audio_vae_workdir
        if not workdir:
            raise ConfigError(f"data.{self.name}_vae_workdir",
                              f"this run does not say which σ-VAE made its {self.name} latents")
        self.vae, self.vae_config, _ = load_model(workdir)
        self.stats = load_stats(stats_dir(config), self.name)

    def grid(self) -> tuple[int, ...]:
        from latentlm_jax.vae.config import audio_latent_shape, image_latent_shape

        v = self.vae_config.vae
        return image_latent_shape(v) if self.modality == IMAGE else audio_latent_shape(v)

    def encode(self, media: np.ndarray) -> np.ndarray:
        """A batch of images (uint8) or waves → normalised latent sequences [B, N, D] (μ)."""
        import jax

        z = encode_examples(self.vae, self.name, media, jax.random.key(0), noisy=False)
        return normalise(z, self.stats)

    def decode(self, latents: np.ndarray) -> Any:
        """Normalised latents [N, D] → uint8 image [H, W, 3] or float32 wave [T]."""
        z = denormalise(np.asarray(latents), self.stats)
        if self.modality == IMAGE:
            h, w, d = self.grid()
            if len(z) != h * w:
                raise ValueError(f"an image needs {h * w} latents, got {len(z)}")
            x = np.asarray(self.vae.decode(jnp.asarray(z.reshape(1, h, w, d))))[0]
            return to_uint8(x)
        wave = np.asarray(self.vae.decode(jnp.asarray(z[None])))[0]
        return np.clip(wave, -1.0, 1.0).astype(np.float32)
