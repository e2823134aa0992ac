"""models/linear.py: the CPU backward pass gives autodiff's gradients of a plain tensordot."""

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
