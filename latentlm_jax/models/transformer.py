"""Decoder-only Transformer backbone: pre-norm blocks, scanned (or not) over layers, with remat.

``Decoder`` maps input embeddings [B, L, E] to final hidden states; ``TextLM`` adds the token
embedding and the LM head. The multimodal LatentLM model reuses ``Decoder`` with its own inputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax.models.layers import (
    Attention,
    Dense,
    Embed,
    RMSNorm,
    SwiGLU,
)
from latentlm_jax.parallel.logical import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = ("none", "full", "save_dots")


def compute_dtype(cfg: mlc.ConfigDict) -> Any:
    return DTYPES[cfg.dtype]


def model_options(cfg: mlc.ConfigDict) -> tuple[bool, str, str]:
    """(``norm_scale``, ``rope_frequencies``, ``init``) of ``config.model``; a config saved before
    these fields existed gets the original choices."""
    return (cfg.get("norm_scale", True), cfg.get("rope_frequencies", "geometric"),
            cfg.get("init", "normal"))


def residual_add(x: jax.Array, h: jax.Array) -> jax.Array:
    """x + h in float32, rounded once to the residual stream's dtype (x's). The norms hand their
    output to the projections in float32 and the blocks' last matmuls return float32, so in 16
    bits each rounding happens inside a fused elementwise pass, none on its own (docs/benchmarks.md,
    profile finding 18)."""
    return (x.astype(jnp.float32) + h.astype(jnp.float32)).astype(x.dtype)


class Block(nnx.Module):
    """x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        dt = compute_dtype(cfg)
        norm_scale, rope_frequencies, init = model_options(cfg)
        self.attn_norm = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps, dtype=dt, rngs=rngs,
                                 scale=norm_scale)
        self.attn = Attention(cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                              rope_theta=cfg.rope_theta, init_std=cfg.init_std, dtype=dt, rngs=rngs,
                              implementation=cfg.attention, rope_frequencies=rope_frequencies,
                              init=init)
        self.mlp_norm = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps, dtype=dt, rngs=rngs,
                                scale=norm_scale)
        self.mlp = SwiGLU(cfg.emb_dim, cfg.mlp_dim, init_std=cfg.init_std, dtype=dt, rngs=rngs,
                          init=init)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        f32 = jnp.float32
        x = residual_add(x, self.attn(self.attn_norm(x, f32), positions, segment_ids, f32))
        x = constrain(x, ("batch", "length", "act_embed"))
        x = residual_add(x, self.mlp(self.mlp_norm(x, f32), f32))
        return constrain(x, ("batch", "length", "act_embed"))

    def extend(self, x: jax.Array, positions: jax.Array, valid: jax.Array, cache: dict,
               start: jax.Array) -> tuple[jax.Array, dict]:
        f32 = jnp.float32
        h, cache = self.attn.extend(self.attn_norm(x, f32), positions, valid, cache, start, f32)
        x = residual_add(x, h)
        return residual_add(x, self.mlp(self.mlp_norm(x, f32), f32)), cache


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if policy == "save_dots":
        # Save the outputs of weight matmuls (dots without batch dimensions: projections and MLP);
        # attention scores (batched dots, O(L²)) are recomputed.
        return jax.checkpoint(
            fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"unknown remat_policy {policy!r}; expected one of {REMAT_POLICIES}")


class Decoder(nnx.Module):
    """The stack of blocks plus the final norm. With ``scan_layers`` the block parameters are
    stacked along a leading "layers" axis and the stack runs under ``jax.lax.scan`` (one compiled
    block)."""

    def __init__(self, cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        self.scan_layers = cfg.scan_layers
        self.remat_policy = cfg.remat_policy
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.num_layers,
                      transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_stack(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs=rngs)

            self.blocks = make_stack(rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps, dtype=compute_dtype(cfg),
                                  rngs=rngs, scale=model_options(cfg)[0])

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """x: input embeddings [B, L, E]; positions: per-document positions (RoPE) [B, L];
        segment_ids: packed-document ids, 0 = padding [B, L]."""
        x = constrain(x, ("batch", "length", "act_embed"))
        if self.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, layer_state):
                return nnx.merge(graphdef, layer_state)(h, positions, segment_ids), None

            x, _ = jax.lax.scan(_remat(body, self.remat_policy), x, state)
        else:
            for block in self.blocks:
                call = _remat(lambda h, b=block: b(h, positions, segment_ids), self.remat_policy)
                x = call(x)
        return self.final_norm(x)

    def extend(self, x: jax.Array, positions: jax.Array, token_valid: jax.Array, cache: dict,
               start: jax.Array) -> tuple[jax.Array, dict]:
        """Runs a chunk x [B, T, E] (a prompt, or T = 1 while decoding) at cache rows
        start..start+T-1, attending to everything cached before it; returns final hidden states
        and the updated cache (see :func:`init_cache`). ``token_valid`` [B, T] is False for
        left-padding, which is never attended to."""
        valid = jax.lax.dynamic_update_slice(cache["valid"], token_valid, (0, start))
        if self.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, xs):
                layer_state, k, v = xs
                h, kv = nnx.merge(graphdef, layer_state).extend(
                    h, positions, valid, {"k": k, "v": v}, start)
                return h, (kv["k"], kv["v"])

            x, (k, v) = jax.lax.scan(body, x, (state, cache["k"], cache["v"]))
        else:
            ks, vs = [], []
            for i, block in enumerate(self.blocks):
                x, kv = block.extend(x, positions, valid,
                                     {"k": cache["k"][i], "v": cache["v"][i]}, start)
                ks.append(kv["k"])
                vs.append(kv["v"])
            k, v = jnp.stack(ks), jnp.stack(vs)
        return self.final_norm(x), {"k": k, "v": v, "valid": valid}


def init_cache(cfg: mlc.ConfigDict, batch: int, max_len: int, dtype: Any = None) -> dict:
    """An empty KV cache: k, v [layers, B, max_len, kv_heads, head_dim], ``valid`` [B, max_len]."""
    dtype = compute_dtype(cfg) if dtype is None else dtype
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "valid": jnp.zeros((batch, max_len), bool)}


class TextLM(nnx.Module):
    """Token embedding → Decoder → logits over the vocabulary."""

    def __init__(self, cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        dt = compute_dtype(cfg)
        self.tie_embeddings = cfg.tie_embeddings
        self.embed = Embed(cfg.vocab_size, cfg.emb_dim, init_std=cfg.init_std, dtype=dt, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        if not cfg.tie_embeddings:  # the authors' code has no LM head: an nn.Linear's init
            self.lm_head = Dense(cfg.emb_dim, cfg.vocab_size, ("embed", "vocab"),
                                 init_std=cfg.init_std, dtype=dt, rngs=rngs,
                                 init=model_options(cfg)[2])

    def logits(self, hidden: jax.Array) -> jax.Array:
        out = self.embed.attend(hidden) if self.tie_embeddings else self.lm_head(hidden)
        return constrain(out, ("batch", "length", "act_vocab"))

    def __call__(self, tokens: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        hidden = self.decoder(self.embed(tokens), positions, segment_ids)
        return self.logits(hidden)
