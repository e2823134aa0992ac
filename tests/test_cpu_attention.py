"""``model.attention = "cpu_flash"``: the fused C++ kernel (latentlm_jax/kernels/cpu_attention.cc)
against the ``xla`` reference — outputs and gradients, packed documents, padding, GQA, lengths
that are no multiple of the kernel's blocks, 16-bit inputs, the model end to end, sharded over a
mesh, decoding — and its build cache and one-line errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.kernels import cpu_attention
from latentlm_jax.models import attention as A
from latentlm_jax.parallel.logical import activation_rules
from latentlm_jax.parallel.mesh_check import check_context
from tests.helpers import tiny_model
from tests.test_attention import (
    _attend,
    _decode,
    _loss_and_grads,
    _text_batch,
    packed_segments,
)

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 6e-2}


def _inputs(b, length, h, kh, d, dtype, seg=None, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, length, n, d)), dtype) for n in (h, kh, kh))
    seg = jnp.ones((b, length), jnp.int32) if seg is None else jnp.asarray(seg, jnp.int32)
    cotangent = jnp.asarray(rng.normal(size=(b, length, h, d)), jnp.float32)
    return q, k, v, seg, cotangent


SHAPES = {
    # B, L, H, K, D, segments
    "packed_gqa": (2, 128, 4, 2, 16, packed_segments(128)),
    "reference_size": (2, 256, 8, 8, 64, None),  # bench_ref's head shape: 4 row blocks of 64
    "odd_length": (1, 100, 2, 1, 40, [[1] * 37 + [2] * 50 + [0] * 13]),  # no multiples of 16
    "short": (3, 7, 2, 2, 8, [[1] * 7, [0] * 2 + [1] * 5, [1, 1, 2, 2, 3, 3, 0]]),
}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_matches_reference_forward_and_gradients(name, dtype):
    b, length, h, kh, d, seg = SHAPES[name]
    args = _inputs(b, length, h, kh, d, dtype, seg)
    want_out, want_grads = _attend("xla", *args)
    got_out, got_grads = _attend("cpu_flash", *args)
    assert got_out.dtype == dtype and got_out.shape == (b, length, h, d)
    assert [g.dtype for g in got_grads] == [dtype] * 3
    for got, want in zip((got_out, *got_grads), (want_out, *want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=0, atol=TOL[dtype])
    # Padding queries see nothing: output 0, and they pass no gradient back.
    pad = np.asarray(args[3]) == 0
    assert np.all(np.asarray(got_out, np.float32)[pad] == 0)
    assert np.all(np.asarray(got_grads[0], np.float32)[pad] == 0)


def test_softmax_of_large_scores_stays_finite():
    """Scores in the hundreds (no overflow: each row's max is subtracted before exp)."""
    q, k, v, seg, cot = _inputs(1, 64, 2, 2, 16, jnp.float32, seed=3)
    args = (q * 30.0, k * 30.0, v, seg, cot)
    want_out, want_grads = _attend("xla", *args)
    got_out, got_grads = _attend("cpu_flash", *args)
    for got, want in zip((got_out, *got_grads), (want_out, *want_grads), strict=True):
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-3)


def test_model_loss_and_gradients_match_reference():
    """The tiny LM (GQA 4:2 heads, scanned layers, packed documents) end to end, float32."""
    batch = _text_batch(128)
    want_loss, want_grads = _loss_and_grads(tiny_model(attention="xla"), batch)
    got_loss, got_grads = _loss_and_grads(tiny_model(attention="cpu_flash"), batch)
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)


@pytest.mark.multidevice
@pytest.mark.parametrize("tensor", [1, 2])
def test_sharded_over_batch_and_heads(tensor):
    """Under a mesh the kernel runs per device in shard_map: batch over data × fsdp, heads over
    tensor; the result and its gradients are the reference's, sharded like the queries."""
    c = base_config()
    data = 8 // (2 * tensor)
    devices = np.array(jax.devices()[:8]).reshape(data, 2, 1, tensor)
    mesh = Mesh(devices, ("data", "fsdp", "context", "tensor"))
    args = _inputs(8, 64, 4, 2, 16, jnp.float32, np.tile(packed_segments(64), (4, 1)))
    want_out, want_grads = _attend("xla", *args)
    spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    q, k, v = (jax.device_put(x, spec) for x in args[:3])
    seg = jax.device_put(args[3], NamedSharding(mesh, P(("data", "fsdp"), None)))
    with activation_rules(mesh, c.sharding_rules):
        got_out, got_grads = _attend("cpu_flash", q, k, v, seg, args[4])
    assert got_out.sharding.spec[0] == ("data", "fsdp")
    for got, want in zip((got_out, *got_grads), (want_out, *want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5)


def test_kv_cache_decoding_uses_the_reference():
    np.testing.assert_allclose(_decode("cpu_flash", "float32"), _decode("xla", "float32"),
                               rtol=0, atol=1e-5)


def test_config_errors():
    c = base_config()
    c.model.attention = "cpu_flash"
    validate(c)
    c.data.seq_len = 256
    with pytest.raises(ConfigError, match=r"'cpu_flash' needs whole sequences"):
        check_context(c, 2)


def test_cross_attention_shapes_are_config_errors():
    q, k, v, seg, _ = _inputs(1, 32, 2, 2, 16, jnp.float32)
    with pytest.raises(ConfigError, match=r"^config\.model\.attention: 'cpu_flash': "
                                          r"self-attention only: 32 queries, 16 keys"):
        A.cpu_flash_attention(q, k[:, :16], v[:, :16], seg)


def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTLM_KERNEL_CACHE", str(tmp_path))
    path = cpu_attention.build()
    assert path.parent == tmp_path and path.suffix == ".so"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    mtime = path.stat().st_mtime_ns
    assert cpu_attention.build() == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    source = tmp_path / "changed.cc"
    source.write_text(cpu_attention.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(cpu_attention, "SOURCE", source)
    assert cpu_attention.library_path() != path


def test_missing_compiler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTLM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(cpu_attention.KernelBuildError) as e:
        cpu_attention.build()
    assert "\n" not in str(e.value) and "'no-such-compiler-xyz' is not on PATH" in str(e.value)


def test_compile_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTLM_KERNEL_CACHE", str(tmp_path))
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_attention, "SOURCE", bad)
    with pytest.raises(cpu_attention.KernelBuildError) as e:
        cpu_attention.build()
    assert "\n" not in str(e.value) and str(e.value).startswith("compiling bad.cc failed")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.cc"]


def test_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LATENTLM_KERNEL_CACHE", str(blocker / "kernels"))
    with pytest.raises(cpu_attention.KernelBuildError, match="LATENTLM_KERNEL_CACHE"):
        cpu_attention.build()


def test_cache_dir_defaults(monkeypatch):
    env = {"HOME": "/home/u"}
    monkeypatch.setattr(os.path, "expanduser", lambda p: p.replace("~", "/home/u"))
    assert str(cpu_attention.cache_dir(env)) == "/home/u/.cache/latentlm_jax/kernels"
    assert str(cpu_attention.cache_dir({"XDG_CACHE_HOME": "/x"})) == "/x/latentlm_jax/kernels"
    assert str(cpu_attention.cache_dir({"LATENTLM_KERNEL_CACHE": "/k"})) == "/k"
