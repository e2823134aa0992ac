"""Between latent sequences and media: the σ-VAEs and latent statistics a LatentLM run was
trained with (``config.data.{image,audio}_vae_workdir``, ``latent_stats_dir``).

:class:`MediaCodec` has one batched path, ``encode_batch`` / ``reconstruct_batch`` /
``decode_batch`` (σ-VAE calls jitted once, compiled once per batch shape), used by ``latentlm
demo``; its single-example ``encode`` / ``decode`` (``latentlm generate``) go through it too.

Understanding inputs (image→text, audio→text prompts) are encoded as the σ-VAE's μ (``"mean"``) or
as one noisy sample z = μ + σ·ε like the latents the LatentLM trained on (``"sample"``, drawn
with the σ-VAE's own sampler from a given key: deterministic); both are normalised with the
training latents' statistics (``generate.understanding_input`` in the demo,
``--understanding-input`` for ``latentlm generate``; docs/vae.md "Fresh noise"), per dimension or
one scalar per modality as the run's ``data.latent_normalisation`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.encode_latents import (
    denormalise,
    load_stats,
    model_input,
    normalise,
    to_sequence,
)
from latentlm_jax.data.latent_noise import DEFAULT_NORMALISATION, stats_for
from latentlm_jax.modality import IMAGE, MODALITY_NAMES
from latentlm_jax.train.checkpoint_io import inference_mesh, load_model, load_run_config
from latentlm_jax.vae.config import audio_latent_shape, image_latent_shape
from latentlm_jax.vae.samples import to_uint8


def stats_dir(config: mlc.ConfigDict) -> str:
    d = config.data
    if d.latent_stats_dir:
        return d.latent_stats_dir
    if d.latent_files:
        return str(paths.resolve(d.latent_files[0]).parent)
    raise ConfigError("data.latent_stats_dir", "unknown: set it (or data.latent_files)")


@nnx.jit
def _decode(vae, z: jax.Array) -> jax.Array:
    return vae.decode(z)


@nnx.jit
def _mode(vae, x: jax.Array) -> jax.Array:
    return vae.mode(x)


@nnx.jit
def _sample(vae, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(μ, one sample z = μ + σ·ε) as the σ-VAE draws it in training."""
    post = vae.posterior(x)
    return post.mean, vae.sample_latent(post.mean, key, post.logvar)


UNDERSTANDING_INPUTS = ("mean", "sample")


def check_understanding_input(value: str, field: str) -> None:
    """A one-line :class:`ConfigError` naming ``field`` unless ``value`` is mean or sample."""
    if value not in UNDERSTANDING_INPUTS:
        raise ConfigError(field, f"must be one of {', '.join(UNDERSTANDING_INPUTS)}; "
                                 f"got {value!r}")


class MediaCodec:
    """One modality's σ-VAE + latent normalisation: media ↔ normalised latent sequences. The
    σ-VAE's weights are sharded over ``devices`` (default: the first local device)."""

    def __init__(self, config: mlc.ConfigDict, modality: int, devices: list | None = None):
        self.modality = modality
        self.name = MODALITY_NAMES[modality]
        workdir = config.data[f"{self.name}_vae_workdir"]
        if not workdir:
            raise ConfigError(f"data.{self.name}_vae_workdir",
                              f"this run does not say which σ-VAE made its {self.name} latents")
        vae_config = load_run_config(workdir)
        self.vae, self.vae_config, _ = load_model(workdir, config=vae_config,
                                                  mesh=inference_mesh(vae_config, devices))
        # The normalisation the run trained with (data.latent_normalisation, from its config):
        # encode and decode use the same per-dim or scalar statistics.
        self.stats = stats_for(load_stats(stats_dir(config), self.name),
                               config.data.get("latent_normalisation", DEFAULT_NORMALISATION))

    def grid(self) -> tuple[int, ...]:
        """The latent grid of one example: (h, w, D) for images, (frames, D) for audio."""
        v = self.vae_config.vae
        return image_latent_shape(v) if self.modality == IMAGE else audio_latent_shape(v)

    # -- batched path --------------------------------------------------------------------------
    def encode_batch(self, media: np.ndarray, understanding: str = "mean",
                     key: jax.Array | None = None) -> np.ndarray:
        """A batch of images (uint8 [B, H, W, 3]) or waves (float32 [B, T]) → normalised latent
        sequences [B, N, D] (images in raster order) of the σ-VAE's μ (``understanding="mean"``)
        or of one sample z = μ + σ·ε per example drawn with ``key`` (``"sample"``)."""
        return self._normalised(self._latents(media, understanding, key)[1])

    def reconstruct_batch(self, media: np.ndarray, understanding: str = "mean",
                          key: jax.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(``encode_batch(media, understanding, key)``, the σ-VAE's reconstructions decode(μ):
        uint8 images [B, H, W, 3] or float32 waves [B, T] in [-1, 1])."""
        mu, z = self._latents(media, understanding, key)
        return self._normalised(z), self._as_media(np.asarray(_decode(self.vae, jnp.asarray(mu))))

    def decode_batch(self, latents: Sequence[np.ndarray] | np.ndarray,
                     num_samples: int | None = None) -> np.ndarray:
        """Normalised latent sequences → media.

        Images: every sequence holds h·w latents (raster order) → uint8 images [B, H, W, 3].
        Audio: sequences of any length ≥ 1, decoded in one call per distinct length → float32
        waves [B, num_samples] in [-1, 1], each cut or zero-padded to ``num_samples`` (default:
        the longest decoded clip).
        """
        if self.modality == IMAGE:
            return self._as_media(self.decode_images_float(latents))
        groups = []
        for n in sorted({len(z) for z in latents}):
            idx = [i for i, z in enumerate(latents) if len(z) == n]
            z = denormalise(np.stack([latents[i] for i in idx]), self.stats)
            groups.append((idx, np.asarray(_decode(self.vae, jnp.asarray(z)), np.float32)))
        length = max(w.shape[1] for _, w in groups) if num_samples is None else num_samples
        out = np.zeros((len(latents), length), np.float32)
        for idx, wave in groups:
            wave = wave[:, :length]
            out[idx, :wave.shape[1]] = wave
        return self._as_media(out)

    def decode_images_float(self, latents: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Normalised image latent sequences (h·w each, raster order) → the σ-VAE's decoded
        images before any rounding: float32 [B, H, W, 3], nominally in [-1, 1]."""
        h, w, d = self.grid()
        for z in latents:
            if len(z) != h * w:
                raise ValueError(f"an image needs {h * w} latents, got {len(z)}")
        z = denormalise(np.stack(latents), self.stats).reshape(-1, h, w, d)
        return np.asarray(_decode(self.vae, jnp.asarray(z)), np.float32)

    # -- one example at a time (``latentlm generate``) -----------------------------------------
    def encode(self, media: np.ndarray, understanding: str = "mean",
               key: jax.Array | None = None) -> np.ndarray:
        """A batch of images (uint8) or waves → normalised latent sequences [B, N, D]; the same
        as :meth:`encode_batch`."""
        return self.encode_batch(media, understanding, key)

    def decode(self, latents: np.ndarray) -> Any:
        """Normalised latents [N, D] → uint8 image [H, W, 3] or float32 wave [T]."""
        return self.decode_batch([np.asarray(latents)])[0]

    # -- helpers -------------------------------------------------------------------------------
    def _latents(self, media: np.ndarray, understanding: str, key: jax.Array | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(μ, the understanding input: μ or a sample) on the latent grid, unnormalised."""
        check_understanding_input(understanding, "understanding_input")
        x = model_input(self.name, media)
        if understanding == "mean":
            mu = np.asarray(_mode(self.vae, x))
            return mu, mu
        if key is None:
            raise ValueError("understanding input 'sample' needs a key")
        mu, z = _sample(self.vae, x, key)
        return np.asarray(mu), np.asarray(z)

    def _normalised(self, mu: np.ndarray) -> np.ndarray:
        return normalise(to_sequence(mu), self.stats)

    def _as_media(self, x: np.ndarray) -> np.ndarray:
        """σ-VAE decoder output → uint8 images, or float32 waves clipped to [-1, 1] (NaN → 0)."""
        if self.modality == IMAGE:
            return to_uint8(x)
        return np.clip(np.nan_to_num(np.asarray(x, np.float32)), -1.0, 1.0)
