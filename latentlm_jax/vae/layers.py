"""Convolution building blocks shared by the image (2-D) and audio (1-D) σ-VAEs.

Layouts are channels-last: images [B, H, W, C], audio [B, T, C]. Kernels are
[*spatial, C_in, C_out] with logical names ("kernel", …, "conv_in", "conv_out"); biases and norm
scales are ("conv_out",) and ("norm",). Parameters are float32; convolutions run in ``dtype``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from latentlm_jax.parallel.logical import param


def _dims(ndim: int) -> tuple[str, str, str]:
    return {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[ndim]


class Conv(nnx.Module):
    """N-d convolution (N = 1 or 2) with bias; ``SAME`` padding, so the output length is
    ceil(input / stride)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, ndim: int, stride: int = 1,
                 zero_init: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.ndim, self.stride, self.dtype = ndim, stride, dtype
        shape = (kernel,) * ndim + (in_ch, out_ch)
        init = (nnx.initializers.zeros if zero_init
                else nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"))
        names = ("kernel",) * ndim + ("conv_in", "conv_out")
        self.kernel = param(init, rngs.params(), shape, names)
        self.bias = param(nnx.initializers.zeros, rngs.params(), (out_ch,), ("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype),
            window_strides=(self.stride,) * self.ndim, padding="SAME",
            dimension_numbers=_dims(self.ndim))
        return y + self.bias[...].astype(self.dtype)


class GroupNorm(nnx.Module):
    """Group normalisation over (spatial, channels-in-group), float32 statistics."""

    def __init__(self, ch: int, *, groups: int = 8, eps: float = 1e-5, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.groups = min(groups, ch)
        if ch % self.groups:
            raise ValueError(f"{ch} channels do not split into {self.groups} groups")
        self.eps, self.dtype = eps, dtype
        self.scale = param(nnx.initializers.ones, rngs.params(), (ch,), ("norm",))
        self.bias = param(nnx.initializers.zeros, rngs.params(), (ch,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        g = x.astype(jnp.float32).reshape(shape[0], -1, self.groups, shape[-1] // self.groups)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class ResBlock(nnx.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))); the second conv starts at zero, so every block
    is the identity at initialisation."""

    def __init__(self, ch: int, kernel: int, *, ndim: int, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.norm1 = GroupNorm(ch, dtype=dtype, rngs=rngs)
        self.conv1 = Conv(ch, ch, kernel, ndim=ndim, dtype=dtype, rngs=rngs)
        self.norm2 = GroupNorm(ch, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(ch, ch, kernel, ndim=ndim, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        return x + self.conv2(jax.nn.silu(self.norm2(h)))


def depth_to_space(x: jax.Array, factor: int, ndim: int) -> jax.Array:
    """[B, *S, C·f^ndim] → [B, *(S·f), C] (pixel shuffle; 1-D: sub-sample interleave)."""
    if factor == 1:
        return x
    b, *spatial, c = x.shape
    out_c = c // factor**ndim
    if ndim == 1:
        return x.reshape(b, spatial[0] * factor, out_c)
    h, w = spatial
    x = x.reshape(b, h, w, factor, factor, out_c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, out_c)


def space_to_depth(x: jax.Array, factor: int, ndim: int) -> jax.Array:
    """[B, *(S·f), C] → [B, *S, C·f^ndim], the inverse of :func:`depth_to_space`."""
    if factor == 1:
        return x
    b, *spatial, c = x.shape
    if ndim == 1:
        return x.reshape(b, spatial[0] // factor, factor * c)
    h, w = spatial[0] // factor, spatial[1] // factor
    x = x.reshape(b, h, factor, w, factor, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, factor * factor * c)


class Upsample(nnx.Module):
    """×factor upsampling: a convolution to C_out·factor^ndim channels at the low rate, then
    depth-to-space (a transposed convolution without its checkerboard overlap)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int, kernel: int, *, ndim: int,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.factor, self.ndim = factor, ndim
        self.conv = Conv(in_ch, out_ch * factor**ndim, kernel, ndim=ndim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return depth_to_space(self.conv(x), self.factor, self.ndim)


def conv_flops(in_side: int, kernel: int, ndim: int, in_ch: int, out_ch: int,
               stride: int = 1) -> float:
    """Forward FLOPs (2 per multiply-add) of one ``SAME``-padded convolution over one example
    whose input is ``in_side`` long on each of its ``ndim`` axes. Only kernel taps that land
    inside the input count (as XLA counts them): at a 4×4 grid a 3×3 kernel does 69% of the
    full-kernel work."""
    out = -(-in_side // stride)
    pad_lo = max((out - 1) * stride + kernel - in_side, 0) // 2
    taps = sum(1 for i in range(out) for j in range(kernel)
               if 0 <= i * stride + j - pad_lo < in_side)
    return 2.0 * float(taps) ** ndim * in_ch * out_ch
