"""The next-token diffusion head: a small adaLN-conditioned SwiGLU MLP stack.

    x = W_in x_t                                   (latent_dim → width, no bias)
    c = W_c RMSNorm(h) + W_t2 silu(W_t1 emb(t))    (condition: backbone hidden h + timestep t)
    per block:  m = RMSNorm(x)·(1 + scale) + shift;  x = x + gate ⊙ SwiGLU(m)
                (shift, scale, gate) = W_ada silu(c) + b_ada
    out = W_out (RMSNorm(x)·(1 + scale) + shift),  (shift, scale) = W_fin silu(c) + b_fin

Biases exist only in the adaLN projections: they give shift/scale/gate a condition-independent
offset (as in DiT); every other projection is bias-free like the backbone. The adaLN projections
(weights and biases) and W_out are zero-initialised, so at init each block is the identity and the
head outputs exactly 0. ``norm_scale`` and ``init`` are ``model.norm_scale`` / ``model.init``
(layers.py): under "torch_default" x_in, the condition projection and the SwiGLUs get PyTorch's
``nn.Linear`` init and the timestep MLP N(0, init_std), as the authors' ``initialize_weights``
does. Leading dims are free and broadcast: x_t [..., latent_dim], t [...] (or a
scalar), h [..., cond_dim] — e.g. h [B, 1, L, E] against x_t [B, K, L, D] computes the condition
projection once for K noise draws. Parameters are float32; compute runs in ``dtype``; norms in
float32; the output is float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from latentlm_jax.diffusion.embedding import timestep_embedding
from latentlm_jax.models.layers import Dense, RMSNorm, SwiGLU
from latentlm_jax.models.linear import linear
from latentlm_jax.parallel.logical import constrain, param


def _constrain_act(x: jax.Array) -> jax.Array:
    names = {2: ("batch", "act_embed"), 3: ("batch", "length", "act_embed"),
             4: ("batch", None, "length", "act_embed")}.get(x.ndim)
    return constrain(x, names) if names else x


class AdaLN(nnx.Module):
    """``n`` modulation vectors [..., n, width] = silu(c) @ W + b, W and b zero-initialised; float32
    (the matmul's accumulator: they are consumed by float32 elementwise passes)."""

    def __init__(self, width: int, n: int, *, dtype: Any, rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel = param(nnx.initializers.zeros, rngs.params(), (width, n, width),
                            ("embed", None, None))
        self.bias = param(nnx.initializers.zeros, rngs.params(), (n, width), (None, None))

    def __call__(self, silu_c: jax.Array) -> jax.Array:
        return linear(silu_c, self.kernel[...], self.bias[...], dtype=self.dtype,
                      out_dtype=jnp.float32)


def split_modulations(mod: jax.Array) -> list[jax.Array]:
    """[..., n, W] → n arrays [..., W]. One split, not n index slices: its gradient is one
    concatenate, where the slices' is n zero-pads summed — in bfloat16 on XLA:CPU a slow 5-D loop
    that rounds after every add (63 ms per block of ``configs/bench_ref.py`` on one core against
    4 ms; docs/benchmarks.md, profile finding 12)."""
    return [jnp.squeeze(m, -2) for m in jnp.split(mod, mod.shape[-2], axis=-2)]


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x·(1 + scale) + shift in float32, rounded once to x's dtype (XLA:CPU rounds a 16-bit
    chain after every op, at half the speed: docs/benchmarks.md, profile finding 14)."""
    return (_f32(x) * (1 + _f32(scale)) + _f32(shift)).astype(x.dtype)


def gated_residual(x: jax.Array, gate: jax.Array, h: jax.Array) -> jax.Array:
    """x + gate·h in float32, rounded once to x's dtype (as :func:`modulate`)."""
    return (_f32(x) + _f32(gate) * _f32(h)).astype(x.dtype)


def silu(x: jax.Array) -> jax.Array:
    """silu in float32, rounded once to x's dtype (as :func:`modulate`)."""
    return jax.nn.silu(_f32(x)).astype(x.dtype)


class HeadBlock(nnx.Module):
    """RMSNorm → adaLN shift/scale → SwiGLU → gated residual."""

    def __init__(self, width: int, mlp_dim: int, *, init_std: float, dtype: Any,
                 rngs: nnx.Rngs, norm_scale: bool = True, init: str = "normal"):
        self.norm = RMSNorm(width, dtype=dtype, rngs=rngs, scale=norm_scale)
        self.ada = AdaLN(width, 3, dtype=dtype, rngs=rngs)
        self.mlp = SwiGLU(width, mlp_dim, init_std=init_std, dtype=dtype, rngs=rngs, init=init)

    def __call__(self, x: jax.Array, silu_c: jax.Array) -> jax.Array:
        return self.apply_modulated(x, self.ada(silu_c))

    def apply_modulated(self, x: jax.Array, mod: jax.Array) -> jax.Array:
        """The block given its adaLN modulations ``mod`` [..., 3, W] (shift, scale, gate)."""
        shift, scale, gate = split_modulations(mod)
        f32 = jnp.float32
        h = self.mlp(modulate(self.norm(x, f32), shift, scale), out_dtype=f32)
        return _constrain_act(gated_residual(x, gate, h))


class DiffusionHead(nnx.Module):
    """Predicts ε (or v) for a noisy latent, given the backbone hidden state and timestep."""

    def __init__(self, *, latent_dim: int, cond_dim: int, width: int, depth: int,
                 mlp_ratio: float = 4.0, freq_dim: int = 256, init_std: float = 0.02,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs, norm_scale: bool = True,
                 init: str = "normal"):
        self.dtype = dtype
        self.freq_dim = freq_dim
        self.latent_dim = latent_dim
        mlp_dim = max(1, round(width * mlp_ratio))
        self.x_in = Dense(latent_dim, width, ("latent", "embed"), init_std=init_std, dtype=dtype,
                          rngs=rngs, init=init)
        self.cond_norm = RMSNorm(cond_dim, dtype=dtype, rngs=rngs, scale=norm_scale)
        self.cond_in = Dense(cond_dim, width, ("embed", None), init_std=init_std, dtype=dtype,
                             rngs=rngs, init=init)
        # The timestep MLP is N(0, init_std) under either init (the authors' N(0, 0.02)).
        self.t_in = Dense(freq_dim, width, (None, "embed"), init_std=init_std, dtype=dtype,
                          rngs=rngs)
        self.t_out = Dense(width, width, ("embed", None), init_std=init_std, dtype=dtype,
                           rngs=rngs)
        self.blocks = nnx.List([HeadBlock(width, mlp_dim, init_std=init_std, dtype=dtype,
                                          rngs=rngs, norm_scale=norm_scale, init=init)
                                for _ in range(depth)])
        self.final_norm = RMSNorm(width, dtype=dtype, rngs=rngs, scale=norm_scale)
        self.final_ada = AdaLN(width, 2, dtype=dtype, rngs=rngs)
        self.out = Dense(width, latent_dim, ("embed", "latent"), dtype=dtype, rngs=rngs,
                         zero_init=True)

    def condition(self, hidden: jax.Array, t: jax.Array) -> jax.Array:
        """c = W_c RMSNorm(hidden) + MLP(sinusoidal(t)), broadcast over leading dims."""
        f32 = jnp.float32
        c_t = self.t_out(silu(self.t_in(timestep_embedding(t, self.freq_dim), f32)), f32)
        return self.cond_in(self.cond_norm(hidden, f32), f32) + c_t

    def __call__(self, x_t: jax.Array, t: jax.Array, hidden: jax.Array) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t), x_t.shape[:-1]) if jnp.ndim(t) == 0 else t
        silu_c = silu(self.condition(hidden, t))
        x = _constrain_act(self.x_in(x_t))
        x = jnp.broadcast_to(x, jnp.broadcast_shapes(x.shape, silu_c.shape))
        for block in self.blocks:
            x = block(x, silu_c)
        return self._final(x, self.final_ada(silu_c))

    def _final(self, x: jax.Array, mod: jax.Array) -> jax.Array:
        """The output layer given its modulations ``mod`` [..., 2, W] (shift, scale)."""
        shift, scale = split_modulations(mod)
        f32 = jnp.float32
        return self.out(modulate(self.final_norm(x, f32), shift, scale), f32)

    # -- sampling: the condition-only work once per latent, then one cheap call per solver step --
    def modulations(self, hidden: jax.Array, ts: jax.Array) -> tuple[jax.Array, ...]:
        """Every adaLN modulation for hidden [R, E] at each solver time ts [M]: one [M, R, n, W]
        array per block, then the final layer's. They depend on (hidden, t) only, not on x_t, so
        a solver computes them for all its steps in one batched matmul per layer."""
        f32 = jnp.float32
        c = self.cond_in(self.cond_norm(hidden, f32), f32)[None]  # [1, R, W]: constant in t
        c_t = self.t_out(silu(self.t_in(timestep_embedding(ts, self.freq_dim), f32)), f32)
        silu_c = silu(c + c_t[:, None])  # [M, R, W]
        return (*(block.ada(silu_c) for block in self.blocks), self.final_ada(silu_c))

    def apply_modulated(self, x_t: jax.Array, mods: tuple[jax.Array, ...]) -> jax.Array:
        """``__call__`` given one step's slice of :meth:`modulations` ([R, n, W] each)."""
        x = _constrain_act(self.x_in(x_t))
        for block, mod in zip(self.blocks, mods[:-1], strict=True):
            x = block.apply_modulated(x, mod)
        return self._final(x, mods[-1])
