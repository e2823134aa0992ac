"""The ``xla`` self-attention of training: softmax(q kᵀ / √d + bias) v, heads-major, with its own
backward pass.

Same maths as :func:`latentlm_jax.models.attention.dot_product_attention` (the explicit reference,
still used for decoding), arranged for speed (docs/benchmarks.md, "profile findings"):

- q, k, v are moved once to heads-major [B, K, G, L, D] / [B, K, S, D], so every score and value
  matmul is a plain batched matmul (batch B·K, rows G·L) instead of a 5-D contraction XLA
  re-lays out per use;
- the mask is an additive float32 bias [B, 1, 1, L, S] built once per step (loop-invariant, so
  hoisted out of a layer scan), not two selects per layer;
- the backward is written out (dV = Pᵀ dO; dS = P ⊙ (dP − δ); dQ = dS K; dK = dSᵀ Q) from the
  saved probabilities P, which is what autodiff computes, minus the selects' backward. The softmax
  correction δ = rowsum(P ⊙ dP) is taken as rowsum(dO ⊙ O) over the head dimension, from the
  float32 output O kept by the forward (the FlashAttention identity: Σ_s P·(dO·V) = dO·(P V)): a
  reduction over D = 64 columns once per layer, not one over every key inside each block's
  elementwise pass (XLA:CPU ran that fused reduction at ~3× the forward softmax's time);
- causal block skipping (``query_block``): queries split into blocks of rows, and block i only
  meets the keys up to its last row, so the all-masked upper triangle of blocks is never computed
  (4 blocks: 5/8 of the score and value matmuls and of the [L, L] elementwise work). The bias
  must be causal, as :func:`causal_bias` is: a key after a query's row is masked.

Every query must see at least one key (true for causal self-attention: a query sees itself);
padding queries (segment 0) see a row of −1e30 biases, get a uniform average and are zeroed by the
caller, so they pass no gradient back.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_BIAS = -1e30  # large finite negative: exp underflows to 0, no inf − inf NaNs


def causal_bias(q_segment: jax.Array, kv_segment: jax.Array) -> jax.Array:
    """[B, 1, 1, Lq, Lk] float32: 0 where key j is in query i's (non-padding) document and
    j ≤ i (indices in the row), ``NEG_BIAS`` elsewhere."""
    lq, lk = q_segment.shape[1], kv_segment.shape[1]
    causal = jnp.arange(lk)[None, :] <= jnp.arange(lq)[:, None]
    same = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] > 0)
    allowed = same & causal[None]
    return jnp.where(allowed, 0.0, NEG_BIAS).astype(jnp.float32)[:, None, None]


def _heads_major(q: jax.Array, k: jax.Array, v: jax.Array):
    b, lq, h, d = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, lq, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, D]
    return qg, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]


def _matmul(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum accumulated in float32, rounded once to a's dtype: what an accelerator's matmul does,
    and the only 16-bit matmul XLA:CPU gives YNNPACK rather than upcasting (models/linear.py)."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _probs(qg: jax.Array, kt: jax.Array, bias: jax.Array) -> jax.Array:
    scale = 1.0 / jnp.sqrt(jnp.float32(qg.shape[-1]))
    s = jnp.einsum("bkgqd,bksd->bkgqs", qg, kt, preferred_element_type=jnp.float32)
    return jax.nn.softmax(s * scale + bias, axis=-1)


def _blocks(queries: int, keys: int, query_block: int | None) -> list[tuple[int, int, int]]:
    """(first row, rows, keys met) of each query block: all keys without blocks, else the keys
    up to the block's last row."""
    if query_block is None:
        return [(0, queries, keys)]
    return [(i, query_block, i + query_block) for i in range(0, queries, query_block)]


def _block_fwd(qg, kt, vt, bias, i, n, e):
    """One query block's probabilities and float32 output, [B, K, G, n, e] and [B, K, G, n, D]."""
    p = _probs(qg[:, :, :, i:i + n], kt[:, :, :e], bias[..., i:i + n, :e])
    return p, jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vt.dtype), vt[:, :, :e],
                         preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core(qg: jax.Array, kt: jax.Array, vt: jax.Array, bias: jax.Array,
          query_block: int | None) -> jax.Array:
    return _core_fwd(qg, kt, vt, bias, query_block)[0]


def _core_fwd(qg, kt, vt, bias, query_block):
    blocks = [_block_fwd(qg, kt, vt, bias, *block)
              for block in _blocks(qg.shape[3], kt.shape[2], query_block)]
    out = jnp.concatenate([o for _, o in blocks], axis=3) if len(blocks) > 1 else blocks[0][1]
    return out.astype(qg.dtype), (qg, kt, vt, [p for p, _ in blocks], out)


def _core_bwd(query_block, res, dout):
    qg, kt, vt, probs, out = res
    scale = 1.0 / jnp.sqrt(jnp.float32(qg.shape[-1]))
    dt = vt.dtype
    f32 = jnp.float32
    delta = jnp.sum(dout.astype(f32) * out, axis=-1, keepdims=True)  # rowsum(P ⊙ dP), [B,K,G,L,1]
    dq, dk, dv = [], jnp.zeros(kt.shape, f32), jnp.zeros(vt.shape, f32)
    for (i, n, e), p in zip(_blocks(qg.shape[3], kt.shape[2], query_block), probs, strict=True):
        do = dout[:, :, :, i:i + n]
        dp = jnp.einsum("bkgqd,bksd->bkgqs", do, vt[:, :, :e], preferred_element_type=f32)
        ds = (p * (dp - delta[:, :, :, i:i + n]) * scale).astype(dt)
        dq.append(_matmul("bkgqs,bksd->bkgqd", ds, kt[:, :, :e]))
        # the key/value gradients of every block are summed in float32 and rounded once
        dv = dv.at[:, :, :e].add(jnp.einsum("bkgqs,bkgqd->bksd", p.astype(dt), do,
                                            preferred_element_type=f32))
        dk = dk.at[:, :, :e].add(jnp.einsum("bkgqs,bkgqd->bksd", ds, qg[:, :, :, i:i + n],
                                            preferred_element_type=f32))
    dq = jnp.concatenate(dq, axis=3) if len(dq) > 1 else dq[0]
    return dq.astype(qg.dtype), dk.astype(kt.dtype), dv.astype(vt.dtype), None


_core.defvjp(_core_fwd, _core_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
              query_block: int | None = None) -> jax.Array:
    """q [B, L, H, D]; k, v [B, S, K, D] (H % K == 0); bias from :func:`causal_bias`.
    Returns [B, L, H, D] in q's dtype (rows whose bias is all ``NEG_BIAS`` are not zeroed here).

    ``query_block`` (a divisor of L, with L == S): causal block skipping, query rows
    [i·n, (i+1)·n) attend to keys [0, (i+1)·n) only. None: all queries meet all keys."""
    b, lq, h, d = q.shape
    if query_block is not None and query_block >= lq:
        query_block = None
    if query_block is not None and (lq != k.shape[1] or lq % query_block):
        raise ValueError(f"query_block {query_block} needs self-attention of a length it "
                         f"divides; got queries {lq}, keys {k.shape[1]}")
    out = _core(*_heads_major(q, k, v), bias, query_block)  # [B, K, G, L, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d).astype(q.dtype)
