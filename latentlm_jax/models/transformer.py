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
    attention_mask,
)
from latentlm_jax.parallel.logical import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = ("none", "full", "save_dots")


def compute_dtype(cfg: mlc.ConfigDict) -> Any:
    return DTYPES[cfg.dtype]


class Block(nnx.Module):
    """x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        dt = compute_dtype(cfg)
        self.attn_norm = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps, dtype=dt, rngs=rngs)
        self.attn = Attention(cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                              rope_theta=cfg.rope_theta, init_std=cfg.init_std, dtype=dt, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps, dtype=dt, rngs=rngs)
        self.mlp = SwiGLU(cfg.emb_dim, cfg.mlp_dim, init_std=cfg.init_std, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), positions, mask)
        x = constrain(x, ("batch", "length", "act_embed"))
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "act_embed"))


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
                                  rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """x: input embeddings [B, L, E]; positions: per-document positions (RoPE) [B, L];
        segment_ids: packed-document ids, 0 = padding [B, L]."""
        x = constrain(x, ("batch", "length", "act_embed"))
        idx = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), segment_ids.shape)
        mask = attention_mask(segment_ids, segment_ids, idx, idx, causal=True)
        if self.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, layer_state):
                return nnx.merge(graphdef, layer_state)(h, positions, mask), None

            x, _ = jax.lax.scan(_remat(body, self.remat_policy), x, state)
        else:
            for block in self.blocks:
                call = _remat(lambda h, b=block: b(h, positions, mask), self.remat_policy)
                x = call(x)
        return self.final_norm(x)


class TextLM(nnx.Module):
    """Token embedding → Decoder → logits over the vocabulary."""

    def __init__(self, cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        dt = compute_dtype(cfg)
        self.tie_embeddings = cfg.tie_embeddings
        self.embed = Embed(cfg.vocab_size, cfg.emb_dim, init_std=cfg.init_std, dtype=dt, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Dense(cfg.emb_dim, cfg.vocab_size, ("embed", "vocab"),
                                 init_std=cfg.init_std, dtype=dt, rngs=rngs)

    def logits(self, hidden: jax.Array) -> jax.Array:
        out = self.embed.attend(hidden) if self.tie_embeddings else self.lm_head(hidden)
        return constrain(out, ("batch", "length", "act_vocab"))

    def __call__(self, tokens: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        hidden = self.decoder(self.embed(tokens), positions, segment_ids)
        return self.logits(hidden)
