"""The ``xla`` self-attention of training: softmax(q kᵀ / √d + bias) v, heads-major, with its own
backward pass.

Same maths as :func:`latentlm_jax.models.attention.dot_product_attention` (the explicit reference,
still used for decoding), arranged for speed (docs/benchmarks.md, "profile findings"):

- q, k, v are moved once to heads-major [B, K, G, L, D] / [B, K, S, D], so every score and value
  matmul is a plain batched matmul (batch B·K, rows G·L) instead of a 5-D contraction XLA
  re-lays out per use;
- the mask is an additive float32 bias [B, 1, 1, L, S] built once per step (loop-invariant, so
  hoisted out of a layer scan), not two selects per layer;
- the backward is written out (dV = Pᵀ dO; dS = P ⊙ (dP − rowsum(P ⊙ dP)); dQ = dS K; dK = dSᵀ Q)
  from the saved probabilities P, which is what autodiff computes, minus the selects' backward;
- causal block skipping (``query_block``): queries split into blocks of rows, and block i only
  meets the keys up to its last row, so the all-masked upper triangle of blocks is never computed
  (4 blocks: 5/8 of the score and value matmuls and of the [L, L] elementwise work). The bias
  must be causal, as :func:`causal_bias` is: a key after a query's row is masked.

Every query must see at least one key (true for causal self-attention: a query sees itself);
padding queries (segment 0) see a row of −1e30 biases, get a uniform average and are zeroed by the
caller, so they pass no gradient back.
"""

from __future__ import annotations

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


@jax.custom_vjp
def _core(qg: jax.Array, kt: jax.Array, vt: jax.Array, bias: jax.Array) -> jax.Array:
    p = _probs(qg, kt, bias)
    return _matmul("bkgqs,bksd->bkgqd", p.astype(vt.dtype), vt)


def _core_fwd(qg, kt, vt, bias):
    p = _probs(qg, kt, bias)
    out = _matmul("bkgqs,bksd->bkgqd", p.astype(vt.dtype), vt)
    return out, (qg, kt, vt, p)


def _core_bwd(res, dout):
    qg, kt, vt, p = res
    scale = 1.0 / jnp.sqrt(jnp.float32(qg.shape[-1]))
    dt = vt.dtype
    dv = _matmul("bkgqs,bkgqd->bksd", p.astype(dt), dout)
    dp = jnp.einsum("bkgqd,bksd->bkgqs", dout, vt, preferred_element_type=jnp.float32)
    ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True)) * scale).astype(dt)
    dq = _matmul("bkgqs,bksd->bkgqd", ds, kt)
    dk = _matmul("bkgqs,bkgqd->bksd", ds, qg)
    return dq.astype(qg.dtype), dk.astype(kt.dtype), dv.astype(vt.dtype), None


_core.defvjp(_core_fwd, _core_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
              query_block: int | None = None) -> jax.Array:
    """q [B, L, H, D]; k, v [B, S, K, D] (H % K == 0); bias from :func:`causal_bias`.
    Returns [B, L, H, D] in q's dtype (rows whose bias is all ``NEG_BIAS`` are not zeroed here).

    ``query_block`` (a divisor of L, with L == S): causal block skipping, query rows
    [i·n, (i+1)·n) attend to keys [0, (i+1)·n) only. None: all queries meet all keys."""
    b, lq, h, d = q.shape
    qg, kt, vt = _heads_major(q, k, v)
    if query_block is None or query_block >= lq:
        out = _core(qg, kt, vt, bias)  # [B, K, G, L, D]
    else:
        if lq != k.shape[1] or lq % query_block:
            raise ValueError(f"query_block {query_block} needs self-attention of a length it "
                             f"divides; got queries {lq}, keys {k.shape[1]}")
        n = query_block
        out = jnp.concatenate([
            _core(qg[:, :, :, i:i + n], kt[:, :, :i + n], vt[:, :, :i + n],
                  bias[..., i:i + n, :i + n]) for i in range(0, lq, n)], axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d).astype(q.dtype)
