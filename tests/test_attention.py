"""Every ``model.attention`` implementation against the reference ("xla"): forward and gradients,
float32 and bfloat16, packed rows with padding, grouped KV heads, KV-cache decoding; the splash
kernel runs in Pallas interpret mode on CPU and is compiled for a TPU topology when libtpu is
installed."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.models import attention as A
from latentlm_jax.models.transformer import TextLM, init_cache
from tests.helpers import tiny_model

B, L, H, K, D = 2, 128, 4, 2, 16  # splash tiles are 128 rows: the shortest row it takes
# max |got - reference| allowed: float32 round-off; bfloat16 one or two units in the last place
# of values of magnitude ~4 (the reference rounds its bf16 scores before the float32 softmax).
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 6e-2}


def packed_segments(length: int) -> np.ndarray:
    """Row 0: three documents then padding (segment 0); row 1: two documents."""
    a = length // 4
    return np.stack([np.repeat([1, 2, 3, 0], [a, a + 5, a, length - 3 * a - 5]),
                     np.repeat([1, 2], [length - 30, 30])]).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _attend(impl, q, k, v, seg, cotangent):
    """Output and the gradients of <output, cotangent> w.r.t. q, k, v."""
    def f(q, k, v):
        out = A.self_attention(q, k, v, seg, impl)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    grads, out = jax.grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


@functools.cache
def _kernel_inputs(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(B, L, n, D)), dtype) for n in (H, K, K))
    seg = jnp.asarray(packed_segments(L))
    cotangent = jnp.asarray(rng.normal(size=(B, L, H, D)), jnp.float32)
    args = (q, k, v, seg, cotangent)
    return args, _attend("xla", *args)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("impl", ["dot_product", "splash"])
def test_matches_reference_forward_and_gradients(impl, dtype):
    args, (want_out, want_grads) = _kernel_inputs(dtype)
    seg = args[3]
    with A.splash_interpreted():
        got_out, got_grads = _attend(impl, *args)
    assert got_out.dtype == dtype and got_out.shape == (B, L, H, D)
    for got, want in zip((got_out, *got_grads), (want_out, *want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=0, atol=TOL[dtype])
    # Padding queries attend to nothing, as in the reference; they pass no gradient back.
    pad = np.asarray(seg[0]) == 0
    assert np.all(np.asarray(got_out, np.float32)[0, pad] == 0)
    assert np.all(np.asarray(got_grads[0], np.float32)[0, pad] == 0)


def _cfg(impl, **kw):
    return tiny_model(attention=impl, **kw)


def _text_batch(length):
    rng = np.random.default_rng(1)
    seg = packed_segments(length)
    pos = np.zeros_like(seg)
    for b in range(seg.shape[0]):
        for s in np.unique(seg[b]):
            idx = np.where(seg[b] == s)[0]
            pos[b, idx] = np.arange(len(idx))
    tokens = rng.integers(0, 264, size=seg.shape).astype(np.int32)
    return tuple(jnp.asarray(x) for x in (tokens, pos, seg))


def _loss_and_grads(cfg, batch):
    model = TextLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tokens, pos, seg = batch

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, pos, seg).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)[..., 0]
        return -jnp.sum(logp * (seg > 0)) / jnp.sum(seg > 0)

    return jax.jit(jax.value_and_grad(loss))(params)


def test_model_loss_and_gradients_match_reference():
    """The tiny LM (GQA 4:2 heads, scanned layers) end to end with the splash kernel, float32
    (dot_product runs end to end in tests/test_context_parallel.py)."""
    batch = _text_batch(L)
    want_loss, want_grads = _loss_and_grads(_cfg("xla"), batch)
    with A.splash_interpreted():
        got_loss, got_grads = _loss_and_grads(_cfg("splash"), batch)
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)


@functools.cache
def _decode(impl, dtype):
    """Logits of prefill (4 tokens) + token-by-token decoding through ``Decoder.extend``, with
    row 1 left-padded by 2."""
    b, l, prompt, pad = 2, 10, 4, 2
    rng = np.random.default_rng(8)
    tokens = rng.integers(8, 200, size=(b, l)).astype(np.int32)
    valid = np.ones((b, l), bool)
    valid[1, :pad] = False
    positions = np.tile(np.arange(l), (b, 1)).astype(np.int32)
    positions[1] = np.maximum(np.arange(l) - pad, 0)
    cfg = _cfg(impl, dtype=dtype)
    model = TextLM(cfg, rngs=nnx.Rngs(8))
    cache = init_cache(cfg, b, 16)
    step = jax.jit(lambda x, p, v, c, s: model.decoder.extend(model.embed(x), p, v, c, s))
    outs = []
    for lo, hi in [(0, prompt)] + [(i, i + 1) for i in range(prompt, l)]:
        h, cache = step(jnp.asarray(tokens[:, lo:hi]), jnp.asarray(positions[:, lo:hi]),
                        jnp.asarray(valid[:, lo:hi]), cache, jnp.int32(lo))
        outs.append(np.asarray(model.logits(h), np.float32))
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("impl,dtype", [("dot_product", "float32"), ("dot_product", "bfloat16"),
                                        ("splash", "float32")])
def test_kv_cache_decoding_matches_reference(impl, dtype):
    """Decoding through the KV cache (left-padded rows included) gives the reference's logits;
    splash decodes through jax.nn.dot_product_attention, so it works off TPU too."""
    tol = 1e-5 if dtype == "float32" else 6e-2
    np.testing.assert_allclose(_decode(impl, dtype), _decode("xla", dtype), rtol=0, atol=tol)


def test_splash_off_tpu_is_a_config_error():
    cfg = _cfg("splash")
    model = TextLM(cfg, rngs=nnx.Rngs(0))
    tokens, pos, seg = _text_batch(L)
    with pytest.raises(ConfigError, match=r"^config\.model\.attention: 'splash' runs only on TPU"):
        model(tokens, pos, seg)


def test_unknown_implementation_is_a_config_error():
    c = base_config()
    c.model.attention = "flash"
    with pytest.raises(ConfigError, match="model.attention"):
        validate(c)


# ------------------------------------------------------------------ TPU ahead-of-time compile
def _libtpu_missing() -> bool:
    return importlib.util.find_spec("libtpu") is None


@pytest.mark.slow
@pytest.mark.skipif(_libtpu_missing(), reason="libtpu is not installed (pip install -e '.[tpu]')"
                                               ": cannot compile for a TPU topology")
def test_splash_train_step_compiles_for_tpu(monkeypatch):
    """The real train step of a tiny LM with attention="splash", sharded over fsdp × context ×
    tensor, lowers and compiles for a v5p:2x2x1 topology, and the program holds the Pallas
    kernel (a tpu_custom_call)."""
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other test processes may hold libtpu
    from jax.experimental import topologies

    from latentlm_jax.bench.memory import abstract_batch
    from latentlm_jax.parallel.logical import activation_rules
    from latentlm_jax.train.setup import build_setup

    devices = list(topologies.get_topology_desc(platform="tpu",
                                                topology_name="v5p:2x2x1").devices)
    c = base_config()
    tiny_model(c.model, emb_dim=128, mlp_dim=256, num_heads=4, num_kv_heads=2, head_dim=128,
               attention="splash", dtype="bfloat16")
    c.data.seq_len, c.train.global_batch_size = 256, 4
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.context, c.mesh.ici.tensor = 1, 1, 2, 2
    validate(c)
    setup = build_setup(c, devices)
    with activation_rules(setup.mesh, c.sharding_rules):
        lowered = setup.step_fn.lower(setup.abstract_state(), abstract_batch(setup, c))
    hlo = lowered.compile().as_text()
    assert "tpu_custom_call" in hlo


@pytest.mark.parametrize("length,block", [(256, 64), (128, 64), (192, 64), (512, 128),
                                          (1024, 256), (64, None), (100, None), (24, None)])
def test_causal_query_block_on_cpu(length, block):
    """The xla implementation's causal block skipping on CPU: up to 4 query blocks of at least
    64 rows (docs/benchmarks.md, profile finding 10)."""
    assert A.causal_query_block(length) == block


@pytest.mark.multidevice
def test_no_causal_query_blocks_when_the_length_is_sharded():
    """Context parallelism shards queries along the length: no blocks that would slice it."""
    from jax.sharding import Mesh

    from latentlm_jax.parallel.logical import activation_rules

    rules = base_config().sharding_rules
    split = Mesh(np.array(jax.devices()[:2]).reshape(1, 2), ("fsdp", "context"))
    whole = Mesh(np.array(jax.devices()[:2]).reshape(2, 1), ("fsdp", "context"))
    with activation_rules(split, rules):
        assert A.causal_query_block(256) is None
    with activation_rules(whole, rules):
        assert A.causal_query_block(256) == 64
