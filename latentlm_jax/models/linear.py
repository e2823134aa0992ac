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

import jax
import jax.numpy as jnp

from latentlm_jax.parallel.logical import target_platform

# Token rows per chunk of a 16-bit weight gradient on CPU (see `_weight_gradient_cpu`), and the
# most chunks one gradient is cut into (more rows make longer chunks, not more matmuls to compile).
DW_ROW_CHUNK = 1024
DW_MAX_CHUNKS = 16


def _forward(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tensordot(x, w, axes=1)


def _is_16bit(x: jax.Array) -> bool:
    return jnp.dtype(x.dtype).itemsize < 4


def _tensordot_cpu(a: jax.Array, b: jax.Array, axes, bias: jax.Array | None = None) -> jax.Array:
    """tensordot (+ bias); in 16 bits accumulated in float32, the bias added to the accumulator,
    and rounded once (see the module docstring)."""
    if _is_16bit(a):
        y = jnp.tensordot(a, b, axes=axes, preferred_element_type=jnp.float32)
        return (y if bias is None else y + bias.astype(jnp.float32)).astype(a.dtype)
    y = jnp.tensordot(a, b, axes=axes)
    return y if bias is None else y + bias.astype(y.dtype)


def _weight_gradient_cpu(x2: jax.Array, dy2: jax.Array) -> jax.Array:
    """x2ᵀ·dy2 for x2 [T, a], dy2 [T, b] → [a, b] (float32 in 16-bit dtypes)."""
    if not _is_16bit(x2):
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
    if _is_16bit(dy2):
        return jnp.sum(dy2.astype(jnp.float32), axis=0)
    return jnp.sum(dy2, axis=0)


@jax.custom_vjp
def _linear_cpu(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    return _tensordot_cpu(x, w, 1, b)


def _linear_cpu_fwd(x: jax.Array, w: jax.Array, b: jax.Array | None
                    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array | None]]:
    return _tensordot_cpu(x, w, 1, b), (x, w, b)


def _linear_cpu_bwd(res: tuple[jax.Array, jax.Array, jax.Array | None], dy: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    x, w, b = res
    x, dy = jax.lax.optimization_barrier((x, dy))
    out_axes = list(range(1, w.ndim))  # w [in, *out]; dy [..., *out]
    dx = _tensordot_cpu(dy, w, (list(range(x.ndim - 1, dy.ndim)), out_axes))
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(x2.shape[0], -1)
    dw = _weight_gradient_cpu(x2, dy2).reshape(w.shape)
    db = None if b is None else _bias_gradient_cpu(dy2).reshape(b.shape).astype(b.dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype), db


_linear_cpu.defvjp(_linear_cpu_fwd, _linear_cpu_bwd)


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``x[..., in]`` times ``w[in, *out]`` → ``[..., *out]``, plus ``b[*out]`` when given (x and w
    already in the compute dtype, b any float dtype). The backward pass is CPU-specific where the
    target platform is the CPU (see the module docstring). So is, in 16 bits, where the bias is
    added: on CPU to the float32 accumulator before its one rounding, elsewhere to the result in
    its dtype."""
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x {x.shape} and w {w.shape} do not contract")
    if b is not None and b.shape != w.shape[1:]:
        raise ValueError(f"linear: bias {b.shape} does not match w {w.shape}'s output dims "
                         f"{w.shape[1:]}")
    if target_platform() == "cpu":
        return _linear_cpu(x, w, b)
    y = _forward(x, w)
    return y if b is None else y + b.astype(y.dtype)
