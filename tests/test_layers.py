"""Backbone pieces against plain NumPy references, causality, scan/remat equivalence."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.models import layers
from latentlm_jax.models.transformer import Block, TextLM
from tests.helpers import tiny_model


def np_rmsnorm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def np_rope(x, pos, theta):
    """x [B, L, H, D]; pairs (i, i + D/2) rotated by angle pos · theta^(-2i/D)."""
    d = x.shape[-1]
    out = np.empty_like(x)
    for i in range(d // 2):
        ang = pos[:, :, None] * theta ** (-2.0 * i / d)
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = a * np.cos(ang) - b * np.sin(ang)
        out[..., i + d // 2] = b * np.cos(ang) + a * np.sin(ang)
    return out


def np_attention(q, k, v, seg):
    """Per-head loops; key j visible to query i iff j <= i and same non-zero segment."""
    b, l, h, d = q.shape
    kh = k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            ki = hi // (h // kh)
            s = q[bi, :, hi] @ k[bi, :, ki].T / np.sqrt(d)
            mask = np.tril(np.ones((l, l), bool)) & (seg[bi][:, None] == seg[bi][None, :]) & (
                seg[bi][None, :] > 0)
            s = np.where(mask, s, -np.inf)
            with np.errstate(invalid="ignore"):
                p = np.exp(s - s.max(-1, keepdims=True))
                p = p / p.sum(-1, keepdims=True)
            p = np.nan_to_num(p)
            out[bi, :, hi] = p @ v[bi, :, ki]
    return out


def np_swiglu(x, wg, wu, wd):
    g = x @ wg
    return (g / (1 + np.exp(-g)) * (x @ wu)) @ wd


def small_cfg(**kw):
    return tiny_model(**{"num_layers": 3, **kw})


def test_rmsnorm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    norm = layers.RMSNorm(16, eps=1e-5, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.linspace(0.5, 1.5, 16)
    np.testing.assert_allclose(norm(jnp.asarray(x)), np_rmsnorm(x, np.linspace(0.5, 1.5, 16), 1e-5),
                               rtol=1e-5, atol=1e-6)


def test_rope_matches_numpy_and_is_relative():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 50, size=(2, 7)).astype(np.int32)
    np.testing.assert_allclose(layers.apply_rope(jnp.asarray(x), jnp.asarray(pos), 10_000.0),
                               np_rope(x, pos.astype(np.float64), 10_000.0), rtol=1e-4, atol=1e-5)
    # q·k depends only on the position difference.
    q, k = x[:1, :1], x[1:, :1]
    dots = []
    for shift in (0, 11):
        pq, pk = np.array([[3 + shift]]), np.array([[1 + shift]])
        rq = layers.apply_rope(jnp.asarray(q), jnp.asarray(pq), 100.0)
        rk = layers.apply_rope(jnp.asarray(k), jnp.asarray(pk), 100.0)
        dots.append(float(jnp.sum(rq * rk)))
    np.testing.assert_allclose(dots[0], dots[1], rtol=1e-5)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_grouped_query_attention_matches_numpy(heads, kv_heads):
    rng = np.random.default_rng(2)
    b, l, d = 2, 9, 8
    q = rng.normal(size=(b, l, heads, d)).astype(np.float32)
    k = rng.normal(size=(b, l, kv_heads, d)).astype(np.float32)
    v = rng.normal(size=(b, l, kv_heads, d)).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1] * 9], np.int32)
    idx = np.tile(np.arange(l), (b, 1))
    mask = layers.attention_mask(jnp.asarray(seg), jnp.asarray(seg), jnp.asarray(idx),
                                 jnp.asarray(idx))
    out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
    np.testing.assert_allclose(out, np_attention(q, k, v, seg), rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(out)[0, 7:] == 0)  # padding attends to nothing


def test_block_matches_numpy():
    cfg = small_cfg()
    block = Block(cfg, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, cfg.emb_dim)).astype(np.float32)
    pos = np.tile(np.arange(6), (2, 1)).astype(np.int32)
    seg = np.ones((2, 6), np.int32)
    got = block(jnp.asarray(x), jnp.asarray(pos), jnp.asarray(seg))

    p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(block, nnx.Param)))
    h = np_rmsnorm(x, p["attn_norm"]["scale"], cfg.norm_eps)
    q = np.einsum("ble,ehd->blhd", h, p["attn"]["q"])
    k = np.einsum("ble,ehd->blhd", h, p["attn"]["k"])
    v = np.einsum("ble,ehd->blhd", h, p["attn"]["v"])
    q, k = np_rope(q, pos, cfg.rope_theta), np_rope(k, pos, cfg.rope_theta)
    a = np.einsum("blhd,hde->ble", np_attention(q, k, v, seg), p["attn"]["o"])
    x1 = x + a
    want = x1 + np_swiglu(np_rmsnorm(x1, p["mlp_norm"]["scale"], cfg.norm_eps),
                          p["mlp"]["gate"], p["mlp"]["up"], p["mlp"]["down"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_causality(scan):
    """Changing token j never changes the outputs at positions < j."""
    cfg = small_cfg(scan_layers=scan)
    model = TextLM(cfg, rngs=nnx.Rngs(4))
    l, j = 12, 7
    tokens = np.random.default_rng(4).integers(8, 200, size=(1, l)).astype(np.int32)
    pos = np.arange(l, dtype=np.int32)[None]
    seg = np.ones((1, l), np.int32)
    base = np.asarray(model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg)))
    changed = tokens.copy()
    changed[0, j] = (changed[0, j] + 1) % 200 + 8
    out = np.asarray(model(jnp.asarray(changed), jnp.asarray(pos), jnp.asarray(seg)))
    np.testing.assert_array_equal(out[:, :j], base[:, :j])
    assert not np.allclose(out[:, j:], base[:, j:])


def test_packed_documents_do_not_attend_across():
    """A packed row gives each document the same outputs it gets alone."""
    cfg = small_cfg()
    model = TextLM(cfg, rngs=nnx.Rngs(5))
    rng = np.random.default_rng(5)
    a, b = rng.integers(8, 200, size=5), rng.integers(8, 200, size=4)
    row = np.concatenate([a, b])[None].astype(np.int32)
    pos = np.concatenate([np.arange(5), np.arange(4)])[None].astype(np.int32)
    seg = np.array([[1] * 5 + [2] * 4], np.int32)
    packed = np.asarray(model(jnp.asarray(row), jnp.asarray(pos), jnp.asarray(seg)))
    alone = np.asarray(model(jnp.asarray(b[None].astype(np.int32)),
                             jnp.arange(4, dtype=jnp.int32)[None], jnp.ones((1, 4), jnp.int32)))
    np.testing.assert_allclose(packed[:, 5:], alone, rtol=1e-5, atol=1e-5)


def _loss_and_grads(cfg, params, tokens, pos, seg):
    graphdef = nnx.graphdef(TextLM(cfg, rngs=nnx.Rngs(0)))

    def loss(p):
        return jnp.mean(nnx.merge(graphdef, p)(tokens, pos, seg) ** 2)

    return jax.value_and_grad(loss)(params)


def _unstack(params, num_layers):
    """Scanned parameters (leading "layers" axis) → the per-layer layout of the unscanned model."""
    out = dict(params)
    out["decoder"] = dict(params["decoder"])
    blocks = params["decoder"]["blocks"]
    out["decoder"]["blocks"] = {i: jax.tree.map(lambda x, i=i: x[i], blocks)
                                for i in range(num_layers)}
    return out


@pytest.mark.slow
def test_scan_and_remat_policies_agree():
    tokens = jnp.asarray(np.random.default_rng(6).integers(8, 200, size=(2, 10)), jnp.int32)
    pos = jnp.tile(jnp.arange(10, dtype=jnp.int32), (2, 1))
    seg = jnp.ones((2, 10), jnp.int32)
    cfg = small_cfg(scan_layers=True)
    params = nnx.to_pure_dict(nnx.state(TextLM(cfg, rngs=nnx.Rngs(6)), nnx.Param))
    ref_loss, ref_grads = _loss_and_grads(cfg, params, tokens, pos, seg)
    for scan, remat in [(True, "full"), (True, "save_dots"), (False, "none"), (False, "full")]:
        p = params if scan else _unstack(params, cfg.num_layers)
        loss, grads = _loss_and_grads(small_cfg(scan_layers=scan, remat_policy=remat), p,
                                      tokens, pos, seg)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        want = ref_grads if scan else _unstack(ref_grads, cfg.num_layers)
        chex.assert_trees_all_close(grads, want, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_with_float32_params():
    cfg = small_cfg(dtype="bfloat16")
    model = TextLM(cfg, rngs=nnx.Rngs(7))
    params = nnx.state(model, nnx.Param)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jnp.ones((1, 6), jnp.int32)
    out = model(tokens, jnp.arange(6, dtype=jnp.int32)[None], jnp.ones((1, 6), jnp.int32))
    assert out.dtype == jnp.bfloat16
    f32 = TextLM(small_cfg(), rngs=nnx.Rngs(7))(
        tokens, jnp.arange(6, dtype=jnp.int32)[None], jnp.ones((1, 6), jnp.int32))
    np.testing.assert_allclose(out.astype(jnp.float32), f32, atol=5e-2)


@pytest.mark.parametrize("scan", [True, False])
def test_cached_decoding_equals_full_recomputation(scan):
    """Prefill + one token at a time through the KV cache == one full forward pass, including
    left-padded rows."""
    from latentlm_jax.models.transformer import init_cache

    cfg = small_cfg(scan_layers=scan)
    model = TextLM(cfg, rngs=nnx.Rngs(8))
    rng = np.random.default_rng(8)
    b, l, prompt, pad = 2, 10, 4, 2
    tokens = rng.integers(8, 200, size=(b, l)).astype(np.int32)
    # Row 1 is left-padded by `pad`: its real tokens are tokens[1, pad:], positions from 0.
    valid = np.ones((b, l), bool)
    valid[1, :pad] = False
    positions = np.tile(np.arange(l), (b, 1)).astype(np.int32)
    positions[1] = np.maximum(np.arange(l) - pad, 0)
    seg = valid.astype(np.int32)
    full = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(seg)))

    cache = init_cache(cfg, b, 16)
    decoder, embed = model.decoder, model.embed
    h, cache = decoder.extend(embed(jnp.asarray(tokens[:, :prompt])),
                              jnp.asarray(positions[:, :prompt]),
                              jnp.asarray(valid[:, :prompt]), cache, jnp.int32(0))
    outs = [np.asarray(model.logits(h))]
    step = jax.jit(lambda x, p, v, c, s: decoder.extend(embed(x), p, v, c, s))
    for i in range(prompt, l):
        h, cache = step(jnp.asarray(tokens[:, i:i + 1]), jnp.asarray(positions[:, i:i + 1]),
                        jnp.asarray(valid[:, i:i + 1]), cache, jnp.int32(i))
        outs.append(np.asarray(model.logits(h)))
    cached = np.concatenate(outs, axis=1)
    np.testing.assert_allclose(cached[0], full[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cached[1, pad:], full[1, pad:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)],
                         ids=["f32", "bf16"])
def test_tied_logits_and_their_gradients_match_numpy(dtype, tol):
    """Embed.attend (x · Eᵀ through models/linear.py) and its gradients w.r.t. x and the table,
    against float64 NumPy on the same (rounded) operands."""
    from latentlm_jax.models.layers import Embed

    emb = Embed(40, 16, init_std=1.0, dtype=dtype, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 16)).astype(dtype)
    cot = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 40)), np.float64)
    graphdef, state = nnx.split(emb)

    def loss(state, x):
        out = nnx.merge(graphdef, state).attend(x)
        return jnp.sum(out.astype(jnp.float32) * cot.astype(np.float32)), out

    (_, out), (g_state, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, x)
    table = np.asarray(emb.embedding[...].astype(dtype), np.float64)
    x64 = np.asarray(x, np.float64)
    assert out.dtype == dtype and out.shape == (2, 5, 40)
    for got, want in ((out, x64 @ table.T), (g_x, cot @ table),
                      (g_state["embedding"][...], np.einsum("blv,ble->ve", cot, x64))):
        np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                   atol=tol * np.abs(want).max())


def test_bfloat16_swiglu_rounds_its_hidden_once():
    """In bf16, silu(x W_gate) ⊙ x W_up is computed from the two matmuls' float32 accumulators,
    unrounded, and rounded once, as W_down's operand (profile findings 14 and 18): the output
    equals W_down applied to the float64 product rounded to bf16, up to float32 round-off in the
    last matmul; with ``out_dtype`` float32 it is W_down's accumulator, unrounded."""
    mlp = layers.SwiGLU(32, 96, init_std=0.2, dtype=jnp.bfloat16, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(5), (4, 16, 32)).astype(jnp.bfloat16)
    dt, f32 = jnp.bfloat16, jnp.float32
    x64 = np.asarray(x, np.float64)
    g, u = (x64 @ np.asarray(w[...].astype(dt), np.float64) for w in (mlp.gate, mlp.up))
    h = np.asarray(jnp.asarray(g / (1 + np.exp(-g)) * u, f32).astype(dt), np.float64)
    want = h @ np.asarray(mlp.down[...].astype(dt), np.float64)
    got = mlp(x)
    assert got.dtype == dt
    # h may differ from the float64 one by a bf16 rounding where the float32 accumulators fall
    # on the other side of a tie; the result then by float32 round-off and one bf16 rounding
    bound = 2.0 ** -8 * np.abs(want) + 1e-3 * np.abs(want).max()
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound)
    got32 = mlp(x, out_dtype=f32)
    assert got32.dtype == f32
    np.testing.assert_allclose(np.asarray(got32, np.float64), want, rtol=1e-5,
                               atol=1e-3 * np.abs(want).max())
    np.testing.assert_array_equal(np.asarray(got32.astype(dt), f32), np.asarray(got, f32))
