"""Transformer building blocks: RMSNorm, RoPE, grouped-query attention, SwiGLU, embeddings.

All parameters are float32 (``param_dtype``) with logical axis names; computation runs in ``dtype``
(float32 or bfloat16). Norms, softmax and RoPE angles are computed in float32. No biases anywhere.

Three choices follow the authors' released code when asked (docs/fidelity.md rows 13, 15, 18):
``model.norm_scale`` (False: RMSNorm without a learned gain), ``model.rope_frequencies``
("authors": θ^(−j/(D/2−1))) and ``model.init`` ("torch_default": PyTorch's ``nn.Linear`` default
U(±1/√fan_in) for the projections). The defaults are this project's original choices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from latentlm_jax.models.attention import (  # noqa: F401  (re-exported: the reference)
    attention_mask,
    cached_attention,
    dot_product_attention,
    self_attention,
)
from latentlm_jax.models.linear import linear
from latentlm_jax.parallel.logical import constrain, param

INITS = ("normal", "torch_default")
ROPE_FREQUENCIES = ("geometric", "authors")


def normal_init(std: float):
    return nnx.initializers.normal(stddev=std)


def torch_linear_init(fan_in: int):
    """PyTorch's ``nn.Linear`` default weight init: U(±1/√fan_in), std 1/√(3·fan_in)."""
    bound = fan_in ** -0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def projection_init(init: str, std: float, fan_in: int):
    """A projection's weight init under ``model.init``: N(0, std) ("normal") or PyTorch's
    ``nn.Linear`` default ("torch_default") for ``fan_in`` inputs."""
    if init == "normal":
        return normal_init(std)
    if init == "torch_default":
        return torch_linear_init(fan_in)
    raise ValueError(f"unknown init {init!r}; expected one of {INITS}")


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x²) + eps) * scale, computed in float32. ``scale=False``: no learned
    gain (no parameter; the authors' ``elementwise_affine=False``)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs, scale: bool = True):
        self.eps = eps
        self.dtype = dtype
        key = rngs.params()  # drawn either way: the weights after it do not depend on `scale`
        self.scale = param(nnx.initializers.ones, key, (dim,), ("norm",)) if scale else None

    def __call__(self, x: jax.Array, dtype: Any = None) -> jax.Array:
        """The normalised x in ``dtype`` (default: the module's); float32 where the consumer
        computes in float32 or casts it inside a :func:`linear` (no rounding pass of its own)."""
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.scale is not None:
            y = y * self.scale[...]
        return y.astype(self.dtype if dtype is None else dtype)


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; ``attend`` gives tied output logits."""

    def __init__(self, vocab: int, dim: int, *, init_std: float = 0.02, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = param(normal_init(init_std), rngs.params(), (vocab, dim),
                               ("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        # All-gather the table before the lookup (as FSDP does for every weight): a lookup into a
        # sharded table has no efficient SPMD partitioning and XLA would fall back to a full
        # rematerialisation with a warning.
        table = constrain(self.embedding[...], (None, None))
        out = jnp.take(table, ids, axis=0).astype(self.dtype)
        return constrain(out, ("batch", "length", "act_embed")) if out.ndim == 3 else out

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the tied table: ``x · Eᵀ`` through :func:`linear` (its CPU matmuls)."""
        return linear(x, self.embedding[...].T, dtype=self.dtype)


class Dense(nnx.Module):
    """A bias-free linear map ``x[..., in] @ W[in, out]`` with logical names on W."""

    def __init__(self, in_dim: int, out_dim: int, names: tuple[str, str], *,
                 init_std: float = 0.02, dtype: Any = jnp.float32, rngs: nnx.Rngs,
                 zero_init: bool = False, init: str = "normal"):
        self.dtype = dtype
        w_init = nnx.initializers.zeros if zero_init else projection_init(init, init_std, in_dim)
        self.kernel = param(w_init, rngs.params(), (in_dim, out_dim), names)

    def __call__(self, x: jax.Array, out_dtype: Any = None) -> jax.Array:
        """x · W in the module's dtype, the result in ``out_dtype`` (default: that dtype)."""
        return linear(x, self.kernel[...], dtype=self.dtype, out_dtype=out_dtype)


def rope_inv_freq(head_dim: int, theta: float, frequencies: str = "geometric") -> jax.Array:
    """The D/2 RoPE frequencies, float32: "geometric" θ^(−2j/D); "authors" θ^(−j/(D/2−1)), the
    authors' ``θ ** -linspace(0, 1, D/2)`` (``build_rel_pos``), j = 0 … D/2 − 1."""
    half = head_dim // 2
    if frequencies == "geometric":
        exponent = jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim
    elif frequencies == "authors":
        exponent = jnp.linspace(0.0, 1.0, half, dtype=jnp.float32)
    else:
        raise ValueError(f"unknown rope_frequencies {frequencies!r}; expected one of "
                         f"{ROPE_FREQUENCIES}")
    return 1.0 / (theta ** exponent)


def rope_angles(positions: jax.Array, head_dim: int, theta: float,
                frequencies: str = "geometric") -> tuple[jax.Array, jax.Array]:
    """cos/sin of RoPE angles, [..., head_dim // 2], float32."""
    inv_freq = rope_inv_freq(head_dim, theta, frequencies)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               frequencies: str = "geometric") -> jax.Array:
    """Rotary embedding on x [B, L, H, D] at integer positions [B, L].

    "Rotate-half" layout: dims (i, i + D/2) form the rotated pair with the i-th frequency of
    :func:`rope_inv_freq` (the authors' interleaved pairs are a fixed permutation of q/k channels,
    absorbed by the projections).
    The halves are viewed as an axis of 2 and swapped by reversing it: (x1, x2)·cos + (x2, x1)·
    (−sin, sin), with no split and concatenate (which XLA:CPU runs as separate copies).
    """
    half = x.shape[-1] // 2
    cos, sin = rope_angles(positions, x.shape[-1], theta, frequencies)
    cos = jnp.stack([cos, cos], axis=-2)[:, :, None]  # [B, L, 1, 2, D/2]
    sin = jnp.stack([-sin, sin], axis=-2)[:, :, None]
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], 2, half)
    out = x32 * cos + x32[..., ::-1, :] * sin
    return out.reshape(x.shape).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head attention with grouped KV heads, RoPE, no biases. ``implementation`` is
    ``model.attention`` (:mod:`latentlm_jax.models.attention`)."""

    def __init__(self, emb_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float, init_std: float, dtype: Any, rngs: nnx.Rngs,
                 implementation: str = "xla", rope_frequencies: str = "geometric",
                 init: str = "normal"):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta, self.dtype = rope_theta, dtype
        self.rope_frequencies = rope_frequencies
        self.implementation = implementation
        in_init = projection_init(init, init_std, emb_dim)
        self.q = param(in_init, rngs.params(), (emb_dim, num_heads, head_dim),
                       ("embed", "heads", "head_dim"))
        self.k = param(in_init, rngs.params(), (emb_dim, num_kv_heads, head_dim),
                       ("embed", "kv_heads", "head_dim"))
        self.v = param(in_init, rngs.params(), (emb_dim, num_kv_heads, head_dim),
                       ("embed", "kv_heads", "head_dim"))
        self.o = param(projection_init(init, init_std, num_heads * head_dim), rngs.params(),
                       (num_heads, head_dim, emb_dim), ("heads", "head_dim", "embed"))

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projected, RoPE-rotated q, k and v (in the module's dtype) for inputs x [B, L, E] at
        positions [B, L]. q and k leave their matmuls in float32, which RoPE computes in."""
        dt, f32 = self.dtype, jnp.float32
        q = linear(x, self.q[...], dtype=dt, out_dtype=f32)
        k = linear(x, self.k[...], dtype=dt, out_dtype=f32)
        v = linear(x, self.v[...], dtype=dt)
        q = constrain(q, ("batch", "length", "act_heads", "head_dim"))
        k = constrain(k, ("batch", "length", "act_kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "act_kv_heads", "head_dim"))
        q = apply_rope(q, positions, self.rope_theta, self.rope_frequencies).astype(dt)
        k = apply_rope(k, positions, self.rope_theta, self.rope_frequencies).astype(dt)
        return q, k, v

    def out(self, attn: jax.Array, out_dtype: Any = None) -> jax.Array:
        """The output projection of attn [..., H, D], in ``out_dtype`` (default: the module's)."""
        o = self.o[...]
        y = linear(attn.reshape(*attn.shape[:-2], -1), o.reshape(-1, o.shape[-1]),
                   dtype=self.dtype, out_dtype=out_dtype)
        return constrain(y, ("batch", "length", "act_embed"))

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 out_dtype: Any = None) -> jax.Array:
        """Causal self-attention within packed documents (``segment_ids`` [B, L], 0 = padding)."""
        q, k, v = self.qkv(x, positions)
        return self.out(self_attention(q, k, v, segment_ids, self.implementation), out_dtype)

    def extend(self, x: jax.Array, positions: jax.Array, valid: jax.Array, cache: dict,
               start: jax.Array, out_dtype: Any = None) -> tuple[jax.Array, dict]:
        """Attention for a chunk x [B, T, E] written at cache rows start..start+T-1.

        ``cache`` holds k, v [B, S, K, D] and ``valid`` [B, S] marks filled, non-padding rows
        (already updated for this chunk). Query t sees cache rows ≤ start + t that are valid.
        """
        q, k, v = self.qkv(x, positions)
        k_cache = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                               (0, start, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                               (0, start, 0, 0))
        t, s = x.shape[1], k_cache.shape[1]
        q_idx = start + jnp.arange(t)
        causal = jnp.arange(s)[None, :] <= q_idx[:, None]  # [T, S]
        mask = (causal[None] & valid[:, None, :])[:, None]  # [B, 1, T, S]
        out = cached_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask,
                               self.implementation)
        return self.out(out, out_dtype), {"k": k_cache, "v": v_cache}


class SwiGLU(nnx.Module):
    """FFN(x) = W_o (silu(x W_gate) ⊙ x W_up), no biases. silu(·) ⊙ · is computed in float32
    from the two matmuls' float32 results and rounded once, inside W_o's matmul: XLA:CPU runs a
    16-bit elementwise chain with a rounding after every op, at half the speed (docs/benchmarks.md,
    profile finding 14), and a rounding between a matmul and its consumer as a pass of its own
    (finding 18)."""

    def __init__(self, emb_dim: int, mlp_dim: int, *, init_std: float, dtype: Any,
                 rngs: nnx.Rngs, out_names: tuple[str, str] = ("mlp", "embed"),
                 init: str = "normal"):
        self.dtype = dtype
        in_init = projection_init(init, init_std, emb_dim)
        self.gate = param(in_init, rngs.params(), (emb_dim, mlp_dim), ("embed", "mlp"))
        self.up = param(in_init, rngs.params(), (emb_dim, mlp_dim), ("embed", "mlp"))
        self.down = param(projection_init(init, init_std, mlp_dim), rngs.params(),
                          (mlp_dim, emb_dim), out_names)

    def __call__(self, x: jax.Array, out_dtype: Any = None) -> jax.Array:
        """FFN(x) in ``out_dtype`` (default: the module's dtype)."""
        dt, f32 = self.dtype, jnp.float32
        h = (jax.nn.silu(linear(x, self.gate[...], dtype=dt, out_dtype=f32))
             * linear(x, self.up[...], dtype=dt, out_dtype=f32))
        if h.ndim == 3:
            h = constrain(h, ("batch", "length", "act_mlp"))
        return linear(h, self.down[...], dtype=dt, out_dtype=out_dtype)
