"""Sinusoidal timestep embedding.

Layout: for ``half = dim // 2`` frequencies ``f_i = max_period^(−i/half)``, i = 0 … half−1,
``emb(t) = [cos(t·f_0) … cos(t·f_{half−1}), sin(t·f_0) … sin(t·f_{half−1})]`` — all cosines
first, then all sines (the layout of the DDPM / DiT reference code); an odd ``dim`` gets one
trailing zero. t is in schedule steps (0 … T−1, fractional allowed), not in [0, 1].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[..., dim] float32 embedding of timesteps ``t`` of any shape."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
    return emb
