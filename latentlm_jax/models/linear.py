"""The one projection every weight matmul goes through: ``x[..., in] · w[in, *out] (+ b[*out])``.

On accelerators it is a plain ``tensordot`` and autodiff gives the backward pass. On CPU it carries
its own backward pass, because of how XLA:CPU lays out the weight gradient (docs/benchmarks.md,
"profile findings"): dW = xᵀ·dy contracts the token dimension, which is the major dimension of
both operands, so XLA transposes one of them — and when it fuses the elementwise producer of dy
(the SwiGLU or adaLN backward) into that transpose, the fused loop writes in transposed order and
runs at a fraction of memory speed (a [8192, 1344] transpose took ~90 ms instead of ~10); the
same happens to x when XLA recomputes its elementwise producer (a norm, a modulation) inside the
transpose. An ``optimization_barrier`` on (x, dy) keeps both producers out; the matmuls are the same
ones autodiff would emit, so results agree to float rounding (tests/test_linear.py).

In 16-bit dtypes on CPU two more things decide the speed (docs/benchmarks.md, profile finding 11):

- YNNPACK, XLA:CPU's fast matmul, takes 16-bit operands only with a float32 result. A bfloat16
  dot with a bfloat16 result is upcast whole to float32 by jax 0.10's XLA (~200 GFLOP/s here
  against ~390), so every matmul here accumulates in float32 and rounds its result once, as an
  accelerator's matmul unit does.
- YNNPACK also rejects a column-major operand, and XLA folds any transpose of a dW operand back
  into the dot (it would be free for Eigen), so the bfloat16 dW again ran upcast, on Eigen. Here
  the smaller of x and dy is transposed *and its rows reversed* — a reverse is not a transpose, so
  XLA cannot fold it — and the product's rows are reversed back: the dot is a plain row-major
  bfloat16 one (~1.7× faster). The token rows go in chunks of ``DW_ROW_CHUNK``, summed in
  float32: the reversed transpose of a chunk that stays in cache is ~3× faster per byte than one
  of all rows (profile finding 13: bf16 bench_ref −9.6% on an AMX host).
- A bias gradient Σ dy over every row is summed from dy converted to float32, and returned in
  float32 (autodiff's would be rounded to 16 bits first). XLA:CPU split the 16-bit reduction
  into reduce-windows, which took 51 ms each for the diffusion head's adaLN biases of
  ``configs/bench_ref.py`` (profile finding 9); a [1, rows] · [rows, n] matmul with a row of
  ones, which replaced it, is 4.5× slower than the float32 sum (profile finding 14).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from latentlm_jax.parallel.logical import target_platform

# Token rows per chunk of a 16-bit weight gradient on CPU (see `_weight_gradient_cpu`), and the
# most chunks one gradient is cut into (more rows make longer chunks, not more matmuls to compile).
DW_ROW_CHUNK = 1024
DW_MAX_CHUNKS = 16


def _is_16bit(dtype) -> bool:
    return jnp.dtype(dtype).itemsize < 4


def _tensordot_cpu(a: jax.Array, b: jax.Array, axes, bias: jax.Array | None = None,
                   out_dtype=None) -> jax.Array:
    """tensordot (+ bias) in ``out_dtype`` (default a's dtype); in 16 bits accumulated in float32,
    the bias added to the accumulator, and rounded once, if at all (see the module docstring)."""
    out_dtype = a.dtype if out_dtype is None else out_dtype
    if _is_16bit(a.dtype):
        y = jnp.tensordot(a, b, axes=axes, preferred_element_type=jnp.float32)
        return (y if bias is None else y + bias.astype(jnp.float32)).astype(out_dtype)
    y = jnp.tensordot(a, b, axes=axes)
    return (y if bias is None else y + bias.astype(y.dtype)).astype(out_dtype)


def _weight_gradient_cpu(x2: jax.Array, dy2: jax.Array) -> jax.Array:
    """x2ᵀ·dy2 for x2 [T, a], dy2 [T, b] → [a, b] (float32 in 16-bit dtypes)."""
    if not _is_16bit(x2.dtype):
        # One 2-D xᵀ·dy: XLA:CPU runs it as one matmul with a transposed operand and no copy; a
        # tensordot over the leading axes became a YNNPACK dot fed by a transpose copy.
        return jnp.dot(x2.T, dy2)
    # Transpose the smaller operand and reverse its rows, one chunk of token rows at a time
    # (module docstring); sum the chunks' products in float32; reverse the rows back.
    f32 = jnp.float32
    flip_first = x2.shape[1] <= dy2.shape[1]
    a, b = (x2, dy2) if flip_first else (dy2, x2)
    rows = max(DW_ROW_CHUNK, -(-a.shape[0] // DW_MAX_CHUNKS))
    acc = None
    for i in range(0, a.shape[0], rows):
        part = jnp.dot(jnp.flip(a[i:i + rows].T, 0), b[i:i + rows], preferred_element_type=f32)
        acc = part if acc is None else acc + part
    acc = jnp.flip(acc, 0)
    return acc if flip_first else acc.T


def _bias_gradient_cpu(dy2: jax.Array) -> jax.Array:
    """Σ over the rows of dy2 [rows, n] → [n], float32 (module docstring)."""
    if _is_16bit(dy2.dtype):
        return jnp.sum(dy2.astype(jnp.float32), axis=0)
    return jnp.sum(dy2, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _linear_cpu(x: jax.Array, w: jax.Array, b: jax.Array | None, dtypes: tuple) -> jax.Array:
    """``dtypes``: (compute, result, x's, w's); the last two are the cotangents' dtypes."""
    return _linear_cpu_fwd(x, w, b, dtypes)[0]


def _linear_cpu_fwd(x: jax.Array, w: jax.Array, b: jax.Array | None, dtypes: tuple):
    dtype, out_dtype = dtypes[:2]
    xc, wc = x.astype(dtype), w.astype(dtype)
    return _tensordot_cpu(xc, wc, 1, b, out_dtype), (xc, wc, b)


def _linear_cpu_bwd(dtypes: tuple, res, dy: jax.Array):
    dtype, _, x_dtype, w_dtype = dtypes
    x, w, b = res
    x, dy = jax.lax.optimization_barrier((x, dy.astype(dtype)))
    out_axes = list(range(1, w.ndim))  # w [in, *out]; dy [..., *out]
    # dx straight from the float32 accumulator when x came in float32: no rounding, no pass.
    dx = _tensordot_cpu(dy, w, (list(range(x.ndim - 1, dy.ndim)), out_axes), out_dtype=x_dtype)
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(x2.shape[0], -1)
    # dW is rounded to the compute dtype, as autodiff through a cast weight (and PyTorch's
    # autocast) does. On CPU the rounding also ends the fusion of the chunks' float32 sum: without
    # it XLA fused the sum, reverse and transpose into the optimizer's update, reading the chunks
    # in transposed order, 3.6× slower ([1344, 512] from 8 chunks: 46 ms against 13).
    dw = _weight_gradient_cpu(x2, dy2).reshape(w.shape).astype(dtype)
    db = None if b is None else _bias_gradient_cpu(dy2).reshape(b.shape).astype(b.dtype)
    return dx, dw.astype(w_dtype), db


_linear_cpu.defvjp(_linear_cpu_fwd, _linear_cpu_bwd)


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None, *, dtype=None,
           out_dtype=None) -> jax.Array:
    """``x[..., in]`` times ``w[in, *out]`` → ``[..., *out]``, plus ``b[*out]`` when given.

    The product is computed in ``dtype`` (default: w's dtype): x and w are cast to it here, so a
    float32 x (a norm's or a gate's output) gets its gradient straight from the float32
    accumulator; w's gradient is rounded to ``dtype`` first, as through a cast outside. The
    result is in ``out_dtype`` (default ``dtype``); float32 with a 16-bit ``dtype`` returns the
    float32 accumulator unrounded, for a consumer that computes in float32 anyway. On XLA:CPU a
    rounding between a matmul and its consumer is a pass of its own over memory (YNNPACK's matmul
    writes float32 and XLA does not fuse a convert into it: docs/benchmarks.md, profile finding
    18), as is one of a gradient; b may be any float dtype.

    The backward pass is CPU-specific where the target platform is the CPU (see the module
    docstring). So is, in 16 bits, where the bias is added: on CPU to the float32 accumulator
    before its one rounding, elsewhere to the result in its dtype."""
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x {x.shape} and w {w.shape} do not contract")
    if b is not None and b.shape != w.shape[1:]:
        raise ValueError(f"linear: bias {b.shape} does not match w {w.shape}'s output dims "
                         f"{w.shape[1:]}")
    dtype = jnp.dtype(w.dtype if dtype is None else dtype)
    out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
    if target_platform() == "cpu":
        return _linear_cpu(x, w, b, (dtype, out_dtype, jnp.dtype(x.dtype), jnp.dtype(w.dtype)))
    y = jnp.tensordot(x.astype(dtype), w.astype(dtype), axes=1,
                      preferred_element_type=jnp.promote_types(dtype, out_dtype))
    return (y if b is None else y + b.astype(y.dtype)).astype(out_dtype)
