"""The convolutional encoder/decoder pair and the σ-VAE latent logic, for 1-D or 2-D signals.

:class:`ImageVAE` (``image.py``) and :class:`AudioVAE` (``audio.py``) only choose the geometry;
everything else — posterior, σ-VAE noise, plain-VAE reparameterisation — lives here.

σ-VAE (the paper's tokenizer): the encoder outputs only the mean μ; the latent is
``z = μ + σ·ε`` with ε ~ N(0, I) and ONE scalar σ per example, ``σ = n·std/0.8``, n ~ N(0, 1)
(so E|σ| = std·√(2/π)/0.8 ≈ 0.997·std; the sign of σ is irrelevant). Plain VAE: the encoder also
outputs log σ² per element and ``z = μ + exp(logvar/2)·ε``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from latentlm_jax.vae.layers import (
    Conv,
    GroupNorm,
    ResBlock,
    Upsample,
    conv_flops,
    depth_to_space,
    space_to_depth,
)

SIGMA_SCALE = 0.8  # σ = n·std/0.8 (reference code): E|σ| ≈ std


class Posterior(NamedTuple):
    mean: jax.Array
    logvar: jax.Array | None  # None for the σ-VAE


def sample_sigma(rng: jax.Array, batch: int, std: float) -> jax.Array:
    """One σ per example, [batch] float32: n·std/0.8 with n ~ N(0, 1)."""
    return jax.random.normal(rng, (batch,), jnp.float32) * (std / SIGMA_SCALE)


class Geometry(NamedTuple):
    """What differs between the image and the audio codec."""

    ndim: int  # spatial dims: 2 (images) or 1 (audio)
    in_channels: int
    out_channels: int  # of the decoder's output (the input's channels unless a head reads them)
    patch: int  # space-to-depth factor applied before the stem (and undone after the output)
    strides: tuple[int, ...]  # one downsampling stage per entry
    channels: tuple[int, ...]  # per level: len(strides) + 1
    res_blocks: tuple[int, ...]  # per level
    kernel: int  # residual-block and stem kernel
    down_kernel: tuple[int, ...]  # per stage
    up_kernel: int  # kernel of the low-rate conv before depth-to-space


class Encoder(nnx.Module):
    def __init__(self, g: Geometry, out_dim: int, *, dtype: Any, rngs: nnx.Rngs):
        ch, nd = g.channels, g.ndim
        self.patch, self.ndim = g.patch, nd
        self.stem = Conv(g.in_channels * g.patch**nd, ch[0], g.kernel, ndim=nd, dtype=dtype,
                         rngs=rngs)
        self.levels = nnx.List()
        for i, s in enumerate(g.strides):
            blocks = [ResBlock(ch[i], g.kernel, ndim=nd, dtype=dtype, rngs=rngs)
                      for _ in range(g.res_blocks[i])]
            down = Conv(ch[i], ch[i + 1], g.down_kernel[i], ndim=nd, stride=s, dtype=dtype,
                        rngs=rngs)
            self.levels.append(nnx.List([*blocks, down]))
        self.mid = nnx.List([ResBlock(ch[-1], g.kernel, ndim=nd, dtype=dtype, rngs=rngs)
                             for _ in range(g.res_blocks[-1])])
        self.norm_out = GroupNorm(ch[-1], dtype=dtype, rngs=rngs)
        self.conv_out = Conv(ch[-1], out_dim, 3, ndim=nd, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.stem(space_to_depth(x, self.patch, self.ndim))
        for level in self.levels:
            for layer in level:
                h = layer(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h))).astype(jnp.float32)


class Decoder(nnx.Module):
    def __init__(self, g: Geometry, latent_dim: int, *, dtype: Any, rngs: nnx.Rngs):
        ch, nd = g.channels, g.ndim
        self.conv_in = Conv(latent_dim, ch[-1], 3, ndim=nd, dtype=dtype, rngs=rngs)
        self.mid = nnx.List([ResBlock(ch[-1], g.kernel, ndim=nd, dtype=dtype, rngs=rngs)
                             for _ in range(g.res_blocks[-1])])
        self.levels = nnx.List()
        for i in reversed(range(len(g.strides))):
            up = Upsample(ch[i + 1], ch[i], g.strides[i], g.up_kernel, ndim=nd, dtype=dtype,
                          rngs=rngs)
            blocks = [ResBlock(ch[i], g.kernel, ndim=nd, dtype=dtype, rngs=rngs)
                      for _ in range(g.res_blocks[i])]
            self.levels.append(nnx.List([up, *blocks]))
        self.norm_out = GroupNorm(ch[0], dtype=dtype, rngs=rngs)
        self.patch, self.ndim = g.patch, nd
        self.conv_out = Conv(ch[0], g.out_channels * g.patch**nd, g.kernel, ndim=nd, dtype=dtype,
                             rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.levels:
            for layer in level:
                h = layer(h)
        h = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return depth_to_space(h, self.patch, self.ndim).astype(jnp.float32)


def codec_forward_flops(g: Geometry, length: int, latent_dim: int, enc_out: int,
                        encoder: bool = True, decoder: bool = True) -> float:
    """Forward FLOPs of the encoder and/or decoder for one example whose full-rate side is
    ``length`` (convolutions only; norms and activations are negligible)."""
    nd, ch = g.ndim, g.channels
    side = [length // g.patch]  # per level
    for s in g.strides:
        side.append(side[-1] // s)
    in_ch, out_ch = g.in_channels * g.patch**nd, g.out_channels * g.patch**nd
    res = sum(2 * g.res_blocks[i] * conv_flops(side[i], g.kernel, nd, ch[i], ch[i])
              for i in range(len(ch)))
    enc = dec = res
    enc += conv_flops(side[0], g.kernel, nd, in_ch, ch[0])  # stem
    dec += conv_flops(side[0], g.kernel, nd, ch[0], out_ch)  # output conv
    for i, s in enumerate(g.strides):
        enc += conv_flops(side[i], g.down_kernel[i], nd, ch[i], ch[i + 1], stride=s)
        dec += conv_flops(side[i + 1], g.up_kernel, nd, ch[i + 1], ch[i] * s**nd)
    enc += conv_flops(side[-1], 3, nd, ch[-1], enc_out)
    dec += conv_flops(side[-1], 3, nd, latent_dim, ch[-1])
    return (enc if encoder else 0.0) + (dec if decoder else 0.0)


class ConvVAE(nnx.Module):
    """Encoder → (μ[, logvar]) → z → decoder. Inputs and outputs are channels-last floats."""

    def __init__(self, g: Geometry, latent_dim: int, *, kind: str = "sigma", std: float = 0.75,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs, squash_output: bool = False):
        if kind not in ("sigma", "plain"):
            raise ValueError(f"VAE kind must be 'sigma' or 'plain'; got {kind!r}")
        self.geometry, self.latent_dim, self.kind, self.std = g, latent_dim, kind, std
        self.squash_output = squash_output  # tanh on the decoder output (bounded signals)
        enc_out = latent_dim * (2 if kind == "plain" else 1)
        self.encoder = Encoder(g, enc_out, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(g, latent_dim, dtype=dtype, rngs=rngs)

    # Subclasses adapt the user-facing layout (audio: [B, T]) to the convs' channels-last one.
    def to_channels_last(self, x: jax.Array) -> jax.Array:
        return x

    def from_channels_last(self, y: jax.Array) -> jax.Array:
        return y

    def posterior(self, x: jax.Array) -> Posterior:
        h = self.encoder(self.to_channels_last(x))
        if self.kind == "plain":
            mean, logvar = jnp.split(h, 2, axis=-1)
            return Posterior(mean, jnp.clip(logvar, -30.0, 20.0))
        return Posterior(h, None)

    def encode(self, x: jax.Array) -> jax.Array:
        """μ, [B, *latent_grid, latent_dim] float32."""
        return self.posterior(x).mean

    def mode(self, x: jax.Array) -> jax.Array:
        """The deterministic latent (μ) - what downstream code uses when it wants no noise."""
        return self.encode(x)

    def sample_latent(self, mu: jax.Array, rng: jax.Array, logvar: jax.Array | None = None,
                      return_sigma: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """σ-VAE: z = μ + σ·ε with one σ per example (returned as [B] with ``return_sigma``).
        Plain VAE: z = μ + exp(logvar/2)·ε (``logvar`` required; σ returned per element)."""
        k_sigma, k_eps = jax.random.split(rng)
        eps = jax.random.normal(k_eps, mu.shape, jnp.float32)
        if self.kind == "plain":
            if logvar is None:
                raise ValueError("the plain VAE needs logvar to sample (use posterior(x))")
            sigma = jnp.exp(0.5 * logvar)
            z = mu + sigma * eps
        else:
            sigma = sample_sigma(k_sigma, mu.shape[0], self.std)
            z = mu + sigma.reshape((-1,) + (1,) * (mu.ndim - 1)) * eps
        return (z, sigma) if return_sigma else z

    def decode(self, z: jax.Array) -> jax.Array:
        y = self.decoder(z)
        return self.from_channels_last(jnp.tanh(y) if self.squash_output else y)

    def __call__(self, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, Posterior, jax.Array]:
        """(reconstruction of a sampled z, posterior, z) - the training forward pass."""
        post = self.posterior(x)
        z = self.sample_latent(post.mean, rng, post.logvar)
        return self.decode(z), post, z
