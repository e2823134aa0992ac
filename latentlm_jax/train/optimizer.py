"""AdamW with linear warmup + cosine decay and global-norm clipping (the paper's recipe).

``make_optimizer`` is the optax chain: it defines the optimizer state (``tx.init``, its sharding,
its checkpoint layout) and is the reference. The train step applies it with ``adamw_update``:
the same arithmetic on the same state, written as one elementwise expression per parameter with
the step's non-finite guard inside. Through optax's chain XLA computed the new moments in one
pass and the new parameter (recomputing them) in another, both reading the old moments; since the
moments are updated in place, it copied every moment buffer first, and the guard's selects were
more passes (profile finding 19 in docs/benchmarks.md: with the guard, 86 → 44 ms for bench_ref's
35M parameters on a 2-core CPU).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax


def learning_rate_schedule(t: mlc.ConfigDict) -> optax.Schedule:
    """0 → learning_rate over warmup_steps, then cosine to learning_rate · min_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=max(t.num_steps, t.warmup_steps + 1),
        end_value=t.learning_rate * t.min_lr_ratio,
    )


def _decay_mask(params):
    """Weight decay on matrices only: norms' scales (1-D) are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(t: mlc.ConfigDict) -> optax.GradientTransformation:
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    parts.append(optax.adamw(learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
                             weight_decay=t.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)


def adamw_update(t: mlc.ConfigDict, grads: Any, opt_state: Any, params: Any,
                 grad_norm: jax.Array, finite: jax.Array) -> tuple[Any, Any]:
    """``make_optimizer(t)``'s update applied to ``params``, or nothing where ``finite`` is false.

    Returns ``(new_params, new_opt_state)`` with ``opt_state``'s structure. ``grad_norm`` is the
    global norm of ``grads`` (the step computes it anyway). Every parameter's new value and
    moments come from one expression of the old ones, so XLA updates each in one fused pass and in
    place; the values are those of ``optax.apply_updates(params, tx.update(...))`` to float32
    round-off (the clipping multiplies by ``clip / norm`` where optax divides by the norm
    first; tests/test_optimizer.py).
    """
    *clip_state, (adam, masked, sched) = opt_state
    if not (isinstance(adam, optax.ScaleByAdamState)
            and isinstance(sched, optax.ScaleByScheduleState)
            and len(clip_state) == (1 if t.grad_clip > 0 else 0)):
        raise TypeError(f"adamw_update: not make_optimizer's state layout: {opt_state!r:.200}")
    b1, b2 = t.b1, t.b2
    count = optax.safe_increment(adam.count)
    # optax's bias corrections and step size, as scalars (the same expressions as in optax)
    correct1, correct2 = 1 - b1 ** count, 1 - b2 ** count
    step_size = -1 * learning_rate_schedule(t)(sched.count)
    decay = _decay_mask(params)

    if t.grad_clip > 0:  # optax.clip_by_global_norm's (g / norm) · clip, as one scalar factor
        clip = jnp.where(grad_norm < t.grad_clip, 1.0, t.grad_clip / grad_norm)
    keep = lambda new, old: jnp.where(finite, new.astype(old.dtype), old)

    def one(p, g, mu, nu, decayed):
        if t.grad_clip > 0:
            # A product XLA fuses into both moments' passes; the division was a pass of its own.
            g = g * clip.astype(g.dtype)
        mu_new = keep((1 - b1) * g + b1 * mu, mu)
        nu_new = keep((1 - b2) * (g ** 2) + b2 * nu, nu)
        # The parameter's update reads the new moments as they are returned (the old ones where
        # the step is not finite, and then the update is dropped): so XLA writes each moment once
        # and reads it back, instead of recomputing it from the old moment, which it would then
        # have to copy before updating in place.
        u = (mu_new / correct1.astype(mu_new.dtype)) / (
            jnp.sqrt(nu_new / correct2.astype(nu_new.dtype) + 0.0) + t.eps)
        if decayed and t.weight_decay != 0.0:  # optax skips a zero decay
            u = u + t.weight_decay * p
        p_new = jnp.asarray(p + jnp.array(step_size, u.dtype) * u).astype(p.dtype)
        return keep(p_new, p), mu_new, nu_new

    flat, treedef = jax.tree.flatten(params)
    per_leaf = zip(flat, *(treedef.flatten_up_to(x) for x in (grads, adam.mu, adam.nu, decay)),
                   strict=True)
    new_params, mu, nu = zip(*(one(*leaf) for leaf in per_leaf), strict=True)
    rebuild = lambda leaves: jax.tree.unflatten(treedef, leaves)
    new_adam = adam._replace(count=keep(count, adam.count), mu=rebuild(mu), nu=rebuild(nu))
    new_sched = sched._replace(count=keep(optax.safe_increment(sched.count), sched.count))
    return rebuild(new_params), (*clip_state, (new_adam, masked, new_sched))
