"""models/linear.py: the CPU backward pass gives autodiff's gradients of a plain tensordot."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentlm_jax.models import linear as linear_lib
from latentlm_jax.models.linear import linear


def _reference(x, w):
    return jnp.tensordot(x, w, axes=1)


@pytest.mark.parametrize("x_shape,w_shape", [
    ((6, 8), (8, 5)),              # a plain 2-D matmul
    ((2, 7, 8), (8, 5)),           # [B, L, E] @ [E, F]
    ((2, 3, 7, 8), (8, 4, 3)),     # [B, K, L, W] @ [W, n, W'] (adaLN), multi-dim output
    ((2, 7, 8), (8, 2, 4)),        # q/k/v: [B, L, E] @ [E, H, D]
])
def test_values_and_gradients_match_autodiff(x_shape, w_shape):
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, w_shape)
    out_shape = x_shape[:-1] + w_shape[1:]
    c = jax.random.normal(kc, out_shape)  # a fixed cotangent: loss = sum(c * y) + sum(sin(y))

    def loss(f, x, w):
        y = f(x, w)
        return jnp.sum(c * y) + jnp.sum(jnp.sin(y))

    assert linear(x, w).shape == out_shape
    np.testing.assert_allclose(linear(x, w), _reference(x, w), rtol=1e-6, atol=1e-6)
    got = jax.jit(jax.grad(lambda x, w: loss(linear, x, w), argnums=(0, 1)))(x, w)
    want = jax.jit(jax.grad(lambda x, w: loss(_reference, x, w), argnums=(0, 1)))(x, w)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_dtypes():
    x = jax.random.normal(jax.random.key(1), (4, 8)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (8, 3)).astype(jnp.bfloat16)
    gx, gw = jax.grad(lambda x, w: jnp.sum(linear(x, w).astype(jnp.float32)), argnums=(0, 1))(x, w)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(gw, np.float32),
                               np.asarray(jnp.sum(x.astype(jnp.float32), 0)[:, None]
                                          * jnp.ones((1, 3))), rtol=2e-2)


def test_cpu_path_has_the_barrier_and_other_platforms_do_not(monkeypatch):
    x, w = jnp.ones((4, 8)), jnp.ones((8, 3))

    def grad(w):  # a fresh function each call: jax caches traces per function
        return jax.grad(lambda w: jnp.sum(linear(x, w)))(w)

    assert "optimization_barrier" in str(jax.make_jaxpr(lambda w: grad(w))(w))
    monkeypatch.setattr(linear_lib, "target_platform", lambda: "tpu")
    assert "optimization_barrier" not in str(jax.make_jaxpr(lambda w: grad(w))(w))
    np.testing.assert_allclose(grad(w), 4 * jnp.ones((8, 3)))


def test_mismatched_shapes_are_an_error():
    with pytest.raises(ValueError, match="do not contract"):
        linear(jnp.ones((2, 3)), jnp.ones((4, 5)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("x_shape,w_shape", [((6, 8), (8, 5)), ((2, 3, 7, 16), (16, 4, 6))])
def test_linear_with_bias_matches_float64(dtype, x_shape, w_shape):
    """y = x·w + b with the bias added to the float32 accumulator and rounded once; dx, dw as
    without a bias; db = Σ dy accumulated in float32."""
    kx, kw, kb, kc = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(kx, x_shape).astype(dtype)
    w = jax.random.normal(kw, w_shape).astype(dtype)
    b = jax.random.normal(kb, w_shape[1:])  # a float32 parameter
    out_shape = x_shape[:-1] + w_shape[1:]
    c = jax.random.normal(kc, out_shape)

    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, w, b))
    y64 = np.tensordot(x64, w64, axes=1) + b64
    out = jax.jit(linear)(x, w, b)
    assert out.dtype == dtype and out.shape == out_shape
    # one rounding (≤ eps/2 relative) of a float32 sum (≤ a few float32 eps of Σ|x·w| + |b|)
    eps, eps32 = float(jnp.finfo(dtype).eps), float(jnp.finfo(jnp.float32).eps)
    bound = eps / 2 * np.abs(y64) + 8 * eps32 * (
        np.tensordot(np.abs(x64), np.abs(w64), axes=1) + np.abs(b64))
    assert np.all(np.abs(np.asarray(out, np.float64) - y64) <= bound)

    grads = jax.jit(jax.grad(lambda x, w, b: jnp.sum(c * linear(x, w, b).astype(jnp.float32)),
                             argnums=(0, 1, 2)))(x, w, b)
    assert [g.dtype for g in grads] == [dtype, dtype, jnp.float32]
    c16 = np.asarray(c.astype(dtype), np.float64)  # the cotangent as the matmuls see it
    out_axes = list(range(1, len(w_shape)))
    dx64 = np.tensordot(c16, w64, axes=(list(range(len(x_shape) - 1, c.ndim)), out_axes))
    dw64 = np.tensordot(x64, c16, axes=(list(range(len(x_shape) - 1)),) * 2)
    db64 = c16.reshape(-1, *w_shape[1:]).sum(0)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for got, want in zip(grads, (dx64, dw64, db64), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol,
                                   atol=tol * np.abs(want).max())


def test_bias_gradient_is_a_float32_sum_only_on_cpu_in_16_bits(monkeypatch):
    """In 16 bits on CPU db sums dy converted to float32 (a 16-bit reduction XLA:CPU may split
    into reduce-windows, profile finding 9; a ones-row matmul was 4.5× slower, finding 14); in
    float32 and on accelerators autodiff's sum."""
    x, w, b = jnp.ones((64, 8)), jnp.ones((8, 3)), jnp.ones((3,))

    def db_jaxpr(dtype):
        return str(jax.make_jaxpr(jax.grad(lambda b: linear(
            x.astype(dtype), w.astype(dtype), b).astype(jnp.float32).sum()))(b))

    upcast = re.compile(r"f32\[64,3\] = convert_element_type.*\n.*f32\[3\] = reduce_sum")
    assert upcast.search(db_jaxpr(jnp.bfloat16)), db_jaxpr(jnp.bfloat16)
    assert "convert_element_type" not in db_jaxpr(jnp.float32)
    np.testing.assert_allclose(jax.grad(lambda b: linear(x, w, b).sum())(b), [64.0] * 3)
    # the head's adaLN shape of configs/bench_ref.py: one plain reduce, no reduce-window
    xa, wa = jnp.ones((8, 4, 256, 512), jnp.bfloat16), jnp.ones((512, 3, 512), jnp.bfloat16)
    hlo = jax.jit(jax.grad(lambda b: linear(xa, wa, b).astype(jnp.float32).sum())).lower(
        jnp.ones((3, 512))).compile().as_text()
    assert "reduce-window" not in hlo and " dot(" not in hlo
    monkeypatch.setattr(linear_lib, "target_platform", lambda: "tpu")
    assert not upcast.search(db_jaxpr(jnp.bfloat16))
    np.testing.assert_allclose(jax.grad(lambda b: linear(x, w, b).sum())(b), [64.0] * 3)


def test_a_bias_that_does_not_match_the_output_is_an_error():
    with pytest.raises(ValueError, match=r"linear: bias \(4,\) does not match w \(2, 3\)'s "
                                         r"output dims \(3,\)"):
        linear(jnp.ones((5, 2)), jnp.ones((2, 3)), jnp.ones((4,)))


@pytest.mark.parametrize("x_shape,w_shape,row_chunk", [
    ((2, 64, 48), (48, 24), None),       # dW: x is the larger operand, dy is transposed
    ((2, 64, 24), (24, 48), None),       # dW: x is the smaller operand, x is transposed
    ((2, 3, 16, 8), (8, 4, 3), None),    # multi-dim output
    ((2, 64, 48), (48, 24), 48),         # dW over 128 rows in chunks of 48, 48 and 32
    ((2, 64, 24), (24, 48), 32),         # 4 equal chunks, x transposed
])
def test_bfloat16_values_and_gradients_accumulate_in_float32(x_shape, w_shape, row_chunk,
                                                             monkeypatch):
    """In bf16 every matmul (y, dx, dW) is the float32-accumulated product of the bf16 operands,
    rounded once: against a float64 reference of the same bf16 inputs, within one bf16 rounding.
    A weight gradient summed over row chunks is still rounded once."""
    if row_chunk is not None:
        monkeypatch.setattr(linear_lib, "DW_ROW_CHUNK", row_chunk)
    kx, kw, kc = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, x_shape).astype(jnp.bfloat16)
    w = jax.random.normal(kw, w_shape).astype(jnp.bfloat16)
    dy = jax.random.normal(kc, x_shape[:-1] + w_shape[1:]).astype(jnp.bfloat16)
    y, vjp = jax.vjp(linear, x, w)
    dx, dw = jax.jit(vjp)(dy)
    x64, w64, dy64 = (np.asarray(a, np.float64) for a in (x, w, dy))
    n_out = len(w_shape) - 1
    want_y = np.tensordot(x64, w64, axes=1)
    want_dx = np.tensordot(dy64, w64, axes=(list(range(x.ndim - 1, dy.ndim)),
                                            list(range(1, 1 + n_out))))
    want_dw = np.tensordot(x64, dy64, axes=(list(range(x.ndim - 1)), list(range(x.ndim - 1))))
    for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
        assert got.dtype == jnp.bfloat16 and got.shape == want.shape
        # one rounding to bf16 (8 significant bits): |error| ≤ 2⁻⁸·|value| (+ f32 round-off)
        err = np.abs(np.asarray(got, np.float64) - want)
        assert np.all(err <= 2.0 ** -8 * np.abs(want) + 1e-4 * np.abs(want).max()), err.max()


@pytest.mark.parametrize("row_chunk,max_chunks,dw_matmuls", [(1024, 16, 1), (128, 16, 4),
                                                              (64, 3, 3)])
def test_bfloat16_matmuls_are_not_upcast(row_chunk, max_chunks, dw_matmuls, monkeypatch):
    """Every matmul of the compiled bf16 backward (dx and dW) takes bf16 operands: XLA:CPU upcasts
    to float32 a bf16 dot it cannot give YNNPACK, one with a bf16 result or a transposed operand
    (module docstring). That holds for each row chunk of the weight gradient too, and the rows
    are cut into at most ``DW_MAX_CHUNKS`` chunks (512 rows, 64 per chunk, at most 3: 171 each)."""
    monkeypatch.setattr(linear_lib, "DW_ROW_CHUNK", row_chunk)
    monkeypatch.setattr(linear_lib, "DW_MAX_CHUNKS", max_chunks)
    x = jnp.ones((512, 96), jnp.bfloat16)
    w = jnp.ones((96, 160), jnp.bfloat16)
    dy = jnp.ones((512, 160), jnp.bfloat16)
    hlo = jax.jit(lambda x, w, dy: jax.vjp(linear, x, w)[1](dy)).lower(x, w, dy).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]  # the program's own instructions, not fusions' insides
    dtype_of = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", entry))
    matmuls = [line for line in entry.splitlines() if "__ynn_fusion" in line or " dot(" in line]
    assert len(matmuls) == 1 + dw_matmuls, entry
    for line in matmuls:
        operands = re.search(r"(?:fusion|dot)\(([^)]*)\)", line).group(1)
        names = re.findall(r"%([\w.\-]+)", operands)
        assert len(names) == 2 and all(dtype_of[n] == "bf16" for n in names), line


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_compute_dtype_and_float32_result(platform, monkeypatch):
    """``dtype`` casts x and w inside (their cotangents come back in their own dtypes: on CPU a
    float32 x's straight from the float32 accumulator, unrounded; w's rounded to ``dtype`` once, as
    through a cast outside); ``out_dtype=float32`` returns the accumulator unrounded and takes a
    float32 cotangent, which the matmuls see rounded to ``dtype``."""
    monkeypatch.setattr(linear_lib, "target_platform", lambda: platform)
    bf16, f32 = jnp.bfloat16, jnp.float32
    kx, kw, kc = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(kx, (3, 16, 32))  # float32, as a norm hands it over
    w = jax.random.normal(kw, (32, 24))     # a float32 parameter
    c = jax.random.normal(kc, (3, 16, 24))
    x64, w64 = (np.asarray(a.astype(bf16), np.float64) for a in (x, w))
    c64 = np.asarray(c.astype(bf16), np.float64)

    y32 = jax.jit(lambda x, w: linear(x, w, dtype=bf16, out_dtype=f32))(x, w)
    assert y32.dtype == f32
    want = np.tensordot(x64, w64, axes=1)
    np.testing.assert_allclose(np.asarray(y32, np.float64), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    y16 = linear(x, w, dtype=bf16)
    assert y16.dtype == bf16
    np.testing.assert_array_equal(np.asarray(y16, f32), np.asarray(y32.astype(bf16), f32))

    dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(c * linear(x, w, dtype=bf16, out_dtype=f32)),
                              argnums=(0, 1)))(x, w)
    assert dx.dtype == f32 and dw.dtype == f32
    want_dx = np.tensordot(c64, w64, axes=(2, 1))
    if platform == "cpu":  # the CPU backward's own; autodiff elsewhere rounds dx to bf16 first
        np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=1e-5,
                                   atol=1e-5 * np.abs(want_dx).max())
        assert not np.array_equal(np.asarray(dx), np.asarray(dx.astype(bf16).astype(f32)))
    else:  # autodiff's bf16 dx (which XLA:CPU, emulating an accelerator here, sums in bf16)
        np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=0,
                                   atol=2.0 ** -5 * np.abs(want_dx).max())
    want_dw = np.tensordot(x64, c64, axes=([0, 1], [0, 1]))
    np.testing.assert_array_equal(np.asarray(dw), np.asarray(dw.astype(bf16).astype(f32)))
    rtol, atol = (2.0 ** -8, 1e-5) if platform == "cpu" else (0, 2.0 ** -5)
    np.testing.assert_allclose(np.asarray(dw, np.float64), want_dw, rtol=rtol,
                               atol=atol * np.abs(want_dw).max())
