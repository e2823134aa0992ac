"""Image σ-VAE: [B, H, W, 3] in [-1, 1] → a (H/f)×(W/f) grid of latents → back (f = 4/8/16)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax.vae.codec import ConvVAE, Geometry, codec_forward_flops
from latentlm_jax.vae.config import image_levels, per_level
from latentlm_jax.vae.discriminator import DISC_GEOMETRY, PatchDiscriminator
from latentlm_jax.vae.losses import LossSettings


def image_geometry(v: mlc.ConfigDict) -> Geometry:
    im = v.image
    n = image_levels(v)
    return Geometry(ndim=2, in_channels=im.in_channels, out_channels=im.in_channels,
                    patch=im.patch_size, strides=(2,) * n,
                    channels=tuple(im.channels * m for m in per_level(im.channel_mult, n + 1)),
                    res_blocks=per_level(im.num_res_blocks, n + 1), kernel=3,
                    down_kernel=(3,) * n, up_kernel=3)


class ImageVAE(ConvVAE):
    """Encoder: stem conv, per level residual blocks + a stride-2 conv; decoder mirrors it with
    sub-pixel (conv + pixel-shuffle) ×2 upsampling. Latent grid is read in raster order."""

    def __init__(self, v: mlc.ConfigDict, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(v.dtype)
        super().__init__(image_geometry(v), v.image.latent_dim, kind=v.kind, std=v.std,
                         dtype=dtype, rngs=rngs, squash_output=v.image.squash_output)
        self.loss_settings = LossSettings.from_config(v)
        ndim, kernel, stride = DISC_GEOMETRY["image"]
        self.disc = (PatchDiscriminator(v.image.in_channels, v.loss.disc_channels,
                                        v.loss.disc_layers, ndim=ndim, kernel=kernel,
                                        stride=stride, dtype=dtype, rngs=rngs)
                     if v.loss.adversarial else None)


def image_forward_flops(v: mlc.ConfigDict) -> float:
    """Forward FLOPs of encoder + decoder for one image."""
    out = v.image.latent_dim * (2 if v.kind == "plain" else 1)
    return codec_forward_flops(image_geometry(v), v.image.resolution, v.image.latent_dim, out)
