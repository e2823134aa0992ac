"""The train step's fused AdamW (``adamw_update``) against the optax chain that defines it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latentlm_jax.config.base import base_config
from latentlm_jax.train.optimizer import adamw_update, make_optimizer


def train_config(**overrides):
    t = base_config().train
    t.learning_rate, t.warmup_steps, t.num_steps = 3e-3, 2, 6
    t.weight_decay = 0.1  # large enough to show in a few steps
    for k, v in overrides.items():
        setattr(t, k, v)
    return t


def params_and_grads(seed: int, scale: float):
    """A small tree with matrices (decayed) and vectors (not), and gradients of ``scale``."""
    k = jax.random.split(jax.random.key(seed), 6)
    params = {"dense": {"kernel": jax.random.normal(k[0], (6, 5)),
                        "bias": jax.random.normal(k[1], (5,))},
              "norm": {"scale": 1.0 + 0.1 * jax.random.normal(k[2], (6,))},
              "attn": [jax.random.normal(k[3], (4, 2, 3))]}
    leaves, treedef = jax.tree.flatten(params)
    grads = [scale * jax.random.normal(jax.random.fold_in(k[4], i), p.shape)
             for i, p in enumerate(leaves)]
    return params, jax.tree.unflatten(treedef, grads)


def optax_step(tx, params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def fused_step(t, params, grads, opt_state, finite=True):
    norm = optax.global_norm(grads)
    return adamw_update(t, grads, opt_state, params, norm, jnp.asarray(finite))


def assert_trees_close(got, want, rtol=2e-6, atol=1e-8):
    """Equal to float32 round-off. ``atol``: a parameter's update is lr · u with |u| ≲ 1; a few
    ulps of u (the clipping's factor is rounded differently) move it by ~lr · 1e-6 = 3e-9, where
    the updates themselves are ~1e-3."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("overrides,grad_scale", [
    ({}, 0.01),                      # the global norm below grad_clip: no clipping
    ({}, 3.0),                       # above it: clipped every step
    ({"grad_clip": 0.0}, 3.0),       # no clipping transform in the chain at all
    ({"weight_decay": 0.0}, 0.3),    # optax skips a zero decay
    ({"b1": 0.8, "b2": 0.95, "eps": 1e-6, "min_lr_ratio": 0.0}, 0.3),
])
def test_matches_the_optax_chain_step_by_step(overrides, grad_scale):
    """Six steps through warm-up and the cosine: parameters, moments and counts as optax's."""
    t = train_config(**overrides)
    tx = make_optimizer(t)
    params, _ = params_and_grads(0, grad_scale)
    want_p, want_s = params, tx.init(params)
    got_p, got_s = params, tx.init(params)
    ref, fused = jax.jit(lambda *a: optax_step(tx, *a)), jax.jit(lambda *a: fused_step(t, *a))
    for step in range(6):
        _, grads = params_and_grads(step + 1, grad_scale)
        want_p, want_s = ref(want_p, grads, want_s)
        got_p, got_s = fused(got_p, grads, got_s)
        assert_trees_close(got_p, want_p)
        assert_trees_close(got_s, want_s)
    # the parameters moved: by more than round-off, decayed matrices more than vectors
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), got_p, params)
    assert min(jax.tree.leaves(moved)) > 1e-4
    counts = [x for x in jax.tree.leaves(got_s) if x.dtype == jnp.int32]
    assert [int(c) for c in counts] == [6, 6]


def test_a_nonfinite_step_changes_nothing():
    """With ``finite`` false the parameters, moments and both counts come back bitwise; the next
    finite step continues as if the skipped one never came."""
    t = train_config()
    tx = make_optimizer(t)
    params, grads = params_and_grads(0, 0.3)
    p1, s1 = fused_step(t, params, grads, tx.init(params))
    _, bad = params_and_grads(1, 0.3)
    bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), bad)
    p2, s2 = fused_step(t, p1, bad, s1, finite=False)
    for x, y in zip(jax.tree.leaves((p2, s2)), jax.tree.leaves((p1, s1)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _, grads2 = params_and_grads(2, 0.3)
    p1_want, s1_want = optax_step(tx, params, grads, tx.init(params))
    want = optax_step(tx, p1_want, grads2, s1_want)
    assert_trees_close(fused_step(t, p2, grads2, s2), want)


def test_updates_in_place_without_copying_the_moments():
    """Donated, the step's update compiles to no copy of a parameter or moment buffer (optax's
    chain under the guard copied every moment: profile finding 19)."""
    t = train_config()
    tx = make_optimizer(t)
    params, grads = params_and_grads(0, 0.3)
    state = (params, tx.init(params))
    fn = jax.jit(lambda s, g: fused_step(t, s[0], g, s[1]), donate_argnums=(0,))
    hlo = fn.lower(state, grads).compile().as_text()
    shapes = {f"f32[{','.join(map(str, p.shape))}]" for p in jax.tree.leaves(params)}
    copies = [line for line in hlo.splitlines() if " copy(" in line
              and any(line.split("=")[1].strip().startswith(s) for s in shapes)]
    assert copies == []


def test_rejects_a_state_of_another_layout():
    t = train_config()
    params, grads = params_and_grads(0, 0.3)
    other = make_optimizer(train_config(grad_clip=0.0)).init(params)
    with pytest.raises(TypeError, match="make_optimizer's state layout"):
        fused_step(t, params, grads, other)
