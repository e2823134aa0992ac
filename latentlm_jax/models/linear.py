"""The one projection every weight matmul goes through: ``x[..., in] · w[in, *out]``.

On accelerators it is a plain ``tensordot`` and autodiff gives the backward pass. On CPU it carries
its own backward pass, because of how XLA:CPU lays out the weight gradient (docs/benchmarks.md,
"profile findings"): dW = xᵀ·dy contracts the token dimension, which is the major dimension of
both operands, so XLA transposes one of them — and when it fuses the elementwise producer of dy
(the SwiGLU or adaLN backward) into that transpose, the fused loop writes in transposed order and
runs at a fraction of memory speed (a [8192, 1344] transpose took ~90 ms instead of ~10); the
same happens to x when XLA recomputes its elementwise producer (a norm, a modulation) inside the
transpose. An ``optimization_barrier`` on (x, dy) keeps both producers out; the matmuls are the same
ones autodiff would emit, so results agree to float rounding (tests/test_linear.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from latentlm_jax.parallel.logical import target_platform


def _forward(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tensordot(x, w, axes=1)


@jax.custom_vjp
def _linear_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
    return _forward(x, w)


def _linear_cpu_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _forward(x, w), (x, w)


def _linear_cpu_bwd(res: tuple[jax.Array, jax.Array], dy: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    x, w = res
    x, dy = jax.lax.optimization_barrier((x, dy))
    out_axes = list(range(1, w.ndim))  # w [in, *out]; dy [..., *out]
    dx = jnp.tensordot(dy, w, axes=(list(range(x.ndim - 1, dy.ndim)), out_axes))
    # dW as one 2-D xᵀ·dy: XLA:CPU then runs it as one matmul with a transposed operand and no
    # copy; a tensordot over the leading axes became a YNNPACK dot fed by a transpose copy.
    x2 = x.reshape(-1, x.shape[-1])
    dw = jnp.dot(x2.T, dy.reshape(x2.shape[0], -1)).reshape(w.shape)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_linear_cpu.defvjp(_linear_cpu_fwd, _linear_cpu_bwd)


def linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x[..., in]`` times ``w[in, *out]`` → ``[..., *out]`` (operands already in the compute
    dtype). The backward pass is CPU-specific where the target platform is the CPU (see the module
    docstring); the forward is the same everywhere."""
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x {x.shape} and w {w.shape} do not contract")
    if target_platform() == "cpu":
        return _linear_cpu(x, w)
    return _forward(x, w)


@jax.custom_vjp
def _add_bias_cpu(y: jax.Array, b: jax.Array) -> jax.Array:
    return y + b.astype(y.dtype)


def _add_bias_cpu_fwd(y: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _add_bias_cpu(y, b), jnp.zeros((0, *b.shape), b.dtype)  # b's shape and dtype, no data


def _add_bias_cpu_bwd(res: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    b_shape = res.shape[1:]
    dy2 = dy.reshape(-1, math.prod(b_shape))
    # db = Σ_rows dy as a [1, rows] · [rows, n] matmul accumulated in float32
    db = jnp.dot(jnp.ones((1, dy2.shape[0]), dy.dtype), dy2, preferred_element_type=jnp.float32)
    return dy, db.reshape(b_shape).astype(res.dtype)


_add_bias_cpu.defvjp(_add_bias_cpu_fwd, _add_bias_cpu_bwd)


def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
    """``y + b`` (``b`` broadcast over ``y``'s leading axes, cast to ``y``'s dtype).

    On CPU in a 16-bit dtype the bias gradient Σ dy over every leading axis is computed as a
    matmul with a row of ones, accumulated and returned in float32 (autodiff's would be rounded
    to 16 bits first). XLA:CPU splits a low-precision reduction that large into reduce-windows,
    which took 51 ms each for the diffusion head's adaLN biases of ``configs/bench_ref.py`` in
    bfloat16 (docs/benchmarks.md, profile finding 9). Elsewhere it is the plain sum."""
    if y.shape[y.ndim - b.ndim:] != b.shape:
        raise ValueError(f"add_bias: y {y.shape} does not end in b {b.shape}")
    if target_platform() == "cpu" and jnp.dtype(y.dtype).itemsize < 4:
        return _add_bias_cpu(y, b)
    return y + b.astype(y.dtype)
