"""models/attention_core.py against the plain reference (models/attention.dot_product_attention):
outputs and gradients, grouped heads, packed documents with padding, float32 and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentlm_jax.models import attention as A
from latentlm_jax.models import attention_core as core

B, L, D = 2, 24, 8
SEGMENTS = np.array([[1] * 7 + [2] * 9 + [3] * 5 + [0] * 3,   # three documents, then padding
                     [1] * 20 + [2] * 4], np.int32)


def _reference(q, k, v, seg):
    idx = jnp.broadcast_to(jnp.arange(L), seg.shape)
    out = A.dot_product_attention(q, k, v, A.attention_mask(seg, seg, idx, idx))
    return jnp.where((seg > 0)[:, :, None, None], out, 0)


def _fast(q, k, v, seg):
    out = core.attention(q, k, v, core.causal_bias(seg, seg))
    return jnp.where((seg > 0)[:, :, None, None], out, 0)


def _value_and_grads(fn, q, k, v, seg, cot):
    def f(q, k, v):
        out = fn(q, k, v, seg)
        return jnp.sum(out.astype(jnp.float32) * cot), out
    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 6e-2)],
                         ids=["f32", "bf16"])
def test_matches_reference(heads, kv_heads, dtype, tol):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    q, k, v = (jnp.asarray(rng.normal(size=(B, L, n, D)), dtype)
               for n in (heads, kv_heads, kv_heads))
    seg = jnp.asarray(SEGMENTS)
    cot = jnp.asarray(rng.normal(size=(B, L, heads, D)), jnp.float32)
    got_out, got_grads = _value_and_grads(_fast, q, k, v, seg, cot)
    want_out, want_grads = _value_and_grads(_reference, q, k, v, seg, cot)
    assert got_out.dtype == dtype and got_out.shape == (B, L, heads, D)
    for got, want in zip((got_out, *got_grads), (want_out, *want_grads), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=0, atol=tol)
    pad = SEGMENTS[0] == 0
    assert np.all(np.asarray(got_grads[0], np.float32)[0, pad] == 0)  # padding passes nothing back


def test_bias_is_causal_within_documents():
    bias = np.asarray(core.causal_bias(jnp.asarray(SEGMENTS), jnp.asarray(SEGMENTS)))
    assert bias.shape == (B, 1, 1, L, L) and bias.dtype == np.float32
    allowed = bias[:, 0, 0] == 0
    seg = SEGMENTS
    want = ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
            & (np.arange(L)[None, :] <= np.arange(L)[:, None])[None])
    np.testing.assert_array_equal(allowed, want)
    assert np.all(bias[~np.broadcast_to(allowed[:, None, None], bias.shape)] == core.NEG_BIAS)


@pytest.mark.parametrize("query_block", [6, 8, 12])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 6e-2)],
                         ids=["f32", "bf16"])
def test_causal_block_skipping_matches_whole(query_block, dtype, tol):
    """Query blocks that meet only the keys up to their last row give the whole computation's
    outputs and gradients: what they skip is masked anyway."""
    rng = np.random.default_rng(query_block)
    q, k, v = (jnp.asarray(rng.normal(size=(B, L, n, D)), dtype) for n in (4, 2, 2))
    seg = jnp.asarray(SEGMENTS)
    cot = jnp.asarray(rng.normal(size=(B, L, 4, D)), jnp.float32)

    def blocked(q, k, v, seg):
        out = core.attention(q, k, v, core.causal_bias(seg, seg), query_block=query_block)
        return jnp.where((seg > 0)[:, :, None, None], out, 0)

    got = _value_and_grads(blocked, q, k, v, seg, cot)
    want = _value_and_grads(_fast, q, k, v, seg, cot)
    for g, w in zip((got[0], *got[1]), (want[0], *want[1]), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   rtol=0, atol=tol)


def test_query_block_must_divide_a_self_attention_length():
    q = jnp.zeros((1, L, 2, D))
    bias = core.causal_bias(jnp.ones((1, L), jnp.int32), jnp.ones((1, L), jnp.int32))
    with pytest.raises(ValueError, match="query_block 7"):
        core.attention(q, q, q, bias, query_block=7)
    with pytest.raises(ValueError, match="keys 12"):
        core.attention(q, q[:, :12], q[:, :12], bias[..., :12], query_block=6)
