"""The diffusion head: shapes, broadcasting, zero output at init, learning, bf16 compute, names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from latentlm_jax.diffusion.loss import diffusion_loss
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.models import diffusion_head
from latentlm_jax.models.diffusion_head import DiffusionHead, split_modulations

D, E, W = 6, 24, 32
fwd = nnx.jit(lambda m, x, t, h: m(x, t, h))


def make_head(dtype=jnp.float32, seed=0, depth=2):
    return DiffusionHead(latent_dim=D, cond_dim=E, width=W, depth=depth, mlp_ratio=2.0,
                         dtype=dtype, rngs=nnx.Rngs(seed))


def randomize(head, seed=1, std=0.1):
    """Non-zero values for every parameter (the zero-initialised ones included)."""
    state = nnx.state(head, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys,
                                                                             strict=True)]
    nnx.update(head, jax.tree.unflatten(treedef, new))
    return head


def inputs(lead=(5,), seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k1, (*lead, D))
    t = jax.random.randint(k2, lead, 0, 1000)
    h = jax.random.normal(k3, (*lead, E))
    return x, t, h


def test_output_shape_and_zero_at_init():
    head = make_head()
    for lead in ((5,), (2, 3)):
        x, t, h = inputs(lead)
        out = fwd(head, x, t, h)
        assert out.shape == (*lead, D) and out.dtype == jnp.float32
        np.testing.assert_array_equal(out, 0.0)


@pytest.mark.slow
def test_condition_broadcasts_over_draws_and_scalar_t():
    head = randomize(make_head())
    b, k, l = 2, 3, 4
    x = jax.random.normal(jax.random.key(0), (b, k, l, D))
    t = jax.random.randint(jax.random.key(1), (b, k, l), 0, 1000)
    h = jax.random.normal(jax.random.key(2), (b, 1, l, E))
    out = fwd(head, x, t, h)
    full = fwd(head, x, t, jnp.broadcast_to(h, (b, k, l, E)))
    assert out.shape == (b, k, l, D)
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(out)).max() > 1e-3
    x2, _, h2 = inputs((5,))
    t250 = jnp.full((5,), 250.0)
    np.testing.assert_allclose(fwd(head, x2, jnp.float32(250.0), h2), fwd(head, x2, t250, h2),
                               rtol=1e-6)
    # the output depends on each input
    base = fwd(head, x2, t250, h2)
    for other in (fwd(head, x2 + 1.0, t250, h2), fwd(head, x2, t250 * 2.8, h2),
                  fwd(head, x2, t250, h2 * -1.0)):
        assert np.abs(np.asarray(other - base)).max() > 1e-3


def test_block_is_identity_at_init():
    """Zero-initialised adaLN: gate = 0, so the residual stream passes through every block."""
    head = make_head()
    x = jax.random.normal(jax.random.key(0), (5, W))
    silu_c = jax.nn.silu(jax.random.normal(jax.random.key(1), (5, W)))
    for block in head.blocks:
        np.testing.assert_array_equal(block(x, silu_c), x)


@pytest.mark.slow
def test_gradient_flows_and_output_moves_after_one_sgd_step():
    head = make_head()
    sched = make_schedule("cosine")
    x0 = jax.random.normal(jax.random.key(3), (2, 4, D))
    cond = jax.random.normal(jax.random.key(4), (2, 4, E))
    mask = jnp.ones((2, 4), bool)

    def loss_fn(model):
        return diffusion_loss(model, x0, cond, mask, jax.random.key(5), sched)[0]

    opt = nnx.Optimizer(head, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, grads

    gmax = lambda g: jax.tree.map(lambda v: float(jnp.abs(v).max()), nnx.to_pure_dict(g))
    loss0, grads = step(head, opt)
    # At init only the output projection sees a gradient: everything else reaches the output
    # through its zero kernel (or through a zero adaLN gate).
    g0 = gmax(grads)
    assert g0["out"]["kernel"] > 0
    assert all(v == 0 for p, v in jax.tree_util.tree_leaves_with_path(g0)
               if jax.tree_util.keystr(p) != "['out']['kernel']")
    x, t, h = inputs((5,))
    assert np.abs(np.asarray(fwd(head, x, t, h))).max() > 0  # no longer predicts 0
    _, grads = step(head, opt)
    assert gmax(grads)["final_ada"]["kernel"] > 0  # step 2: the final adaLN learns
    _, grads = step(head, opt)
    assert gmax(grads)["blocks"][0]["ada"]["kernel"] > 0  # step 3: the block gates
    for _ in range(3):
        _, grads = step(head, opt)
    assert gmax(grads)["blocks"][0]["mlp"]["gate"] > 0  # then the SwiGLU weights
    assert float(loss_fn(head)) < float(loss0)


def test_jit_bf16_compute_with_f32_params():
    h32 = randomize(make_head(jnp.float32, depth=3))
    h16 = make_head(jnp.bfloat16, depth=3)
    nnx.update(h16, nnx.state(h32, nnx.Param))  # same parameter values
    for leaf in jax.tree.leaves(nnx.state(h16, nnx.Param)):
        assert leaf.dtype == jnp.float32
    x, t, h = inputs((64,))
    out16, out32 = fwd(h16, x, t, h), fwd(h32, x, t, h)
    assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05, rel


def test_parameters_carry_logical_names():
    specs = nnx.get_partition_spec(nnx.state(make_head(), nnx.Param))
    flat = {jax.tree_util.keystr(p): s.value for p, s in
            jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: hasattr(x, "value"))}
    assert flat["['x_in']['kernel']"] == PartitionSpec("latent", "embed")
    assert flat["['out']['kernel']"] == PartitionSpec("embed", "latent")
    assert flat["['blocks'][0]['mlp']['gate']"] == PartitionSpec("embed", "mlp")
    assert flat["['blocks'][0]['mlp']['down']"] == PartitionSpec("mlp", "embed")
    assert flat["['blocks'][1]['norm']['scale']"] == PartitionSpec("norm")
    assert flat["['blocks'][0]['ada']['kernel']"] == PartitionSpec("embed", None, None)
    params = nnx.state(make_head(), nnx.Param)
    assert len(flat) == len(jax.tree.leaves(params))


def test_split_modulations_is_the_slices_and_its_gradient_one_concatenate():
    mod = jax.random.normal(jax.random.key(0), (2, 3, 5, 3, 4))
    parts = split_modulations(mod)
    assert len(parts) == 3
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part, mod[..., i, :])
    weights = jnp.arange(1.0, 4.0)

    def loss(m):
        return sum(w * jnp.sum(p ** 2) for w, p in zip(weights, split_modulations(m), strict=True))

    grad = jax.grad(loss)(mod)
    np.testing.assert_allclose(grad, 2 * mod * weights[:, None], rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(mod))
    assert "concatenate" in jaxpr and " pad[" not in jaxpr


def _within_one_bf16_rounding(got, want64):
    """got (bf16) is want64 (float64) rounded once: |error| ≤ half a bf16 ulp, at most 2⁻⁸·|value|
    with 8 significant bits, plus float32 round-off."""
    err = np.abs(np.asarray(got, np.float64) - want64)
    return np.all(err <= 2.0 ** -8 * np.abs(want64) + 1e-6 * np.abs(want64).max())


@pytest.mark.parametrize("name", ["modulate", "gated_residual", "silu"])
def test_bfloat16_elementwise_helpers_round_once(name):
    """In bf16 the head's elementwise chains are computed in float32 and rounded once (profile
    finding 14): within one rounding of a float64 reference of the same bf16 inputs, which
    rounding after every op (the plain bf16 expression) is not."""
    keys = jax.random.split(jax.random.key(4), 3)
    a, b, c = (jax.random.normal(k, (64, 256)).astype(jnp.bfloat16) for k in keys)
    a64, b64, c64 = (np.asarray(v, np.float64) for v in (a, b, c))
    fn, plain, want = {
        "modulate": (lambda: diffusion_head.modulate(a, b, c), lambda: a * (1 + c) + b,
                     a64 * (1 + c64) + b64),
        "gated_residual": (lambda: diffusion_head.gated_residual(a, b, c), lambda: a + b * c,
                           a64 + b64 * c64),
        "silu": (lambda: diffusion_head.silu(a), lambda: a * jax.nn.sigmoid(a),
                 a64 / (1 + np.exp(-a64))),
    }[name]
    got = fn()
    assert got.dtype == jnp.bfloat16 and got.shape == a.shape
    assert _within_one_bf16_rounding(got, want)
    assert not _within_one_bf16_rounding(plain(), want)  # the reference can tell the two apart
    x32 = a.astype(jnp.float32)
    assert diffusion_head.modulate(x32, x32, x32).dtype == jnp.float32
