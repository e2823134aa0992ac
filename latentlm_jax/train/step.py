"""The pure train step: loss, gradients (with accumulation), AdamW update. Jitted by the trainer.

A step whose loss, a floating-point loss term or the gradient norm is NaN/Inf changes nothing but
``step``: the parameters, the optimizer state (its count included) and the EMA are selected back
on device, so no host sync is needed to keep a NaN out of them. ``state["nonfinite"]`` counts such
steps and records in ``halt_step`` the step that must stop the run (the first one under
``train.nonfinite="halt"``, the ``train.max_nonfinite``-th in a row under ``"skip"``); the trainer
reads it when it fetches metrics and before every save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import nnx

from latentlm_jax.train.optimizer import adamw_update, learning_rate_schedule
from latentlm_jax.train.task import Task


def split_microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """[B, ...] → [num, B/num, ...] with microbatch a = rows {i·num + a}, so each device's
    contiguous slice of the batch contributes equally to every
    microbatch (no cross-device reshuffle)."""

    def one(x):
        return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(one, batch)


def all_finite(loss: jax.Array, metrics: dict[str, jax.Array], grad_norm: jax.Array) -> jax.Array:
    """Whether the loss, every floating-point metric (the loss terms) and the gradient norm are
    finite (a bool scalar; integer metrics such as token counts cannot be NaN)."""
    flags = [jnp.isfinite(loss), jnp.isfinite(grad_norm)]
    flags += [jnp.isfinite(m).all() for m in jax.tree.leaves(metrics)
              if jnp.issubdtype(m.dtype, jnp.inexact)]
    return jnp.stack(flags).all()


def count_nonfinite(guard: dict[str, jax.Array], finite: jax.Array, step: jax.Array,
                    t: mlc.ConfigDict) -> dict[str, jax.Array]:
    """The guard's counters after ``step`` (1-based): ``halt_step`` is set once, at the first
    non-finite step under ``halt`` or the ``max_nonfinite``-th in a row under ``skip``."""
    bad = 1 - finite.astype(jnp.int32)
    run = (guard["run"] + 1) * bad
    trip = bad > 0 if t.nonfinite == "halt" else run >= t.max_nonfinite
    halt_step = jnp.where((guard["halt_step"] == 0) & trip, step, guard["halt_step"])
    return {"skipped": guard["skipped"] + bad, "run": run, "halt_step": halt_step}


def make_train_step(task: Task, config: mlc.ConfigDict,
                    graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """The step on a state whose ``opt_state`` is ``make_optimizer(config.train).init(params)``."""
    accum = config.train.grad_accum_steps
    schedule = learning_rate_schedule(config.train)
    base_key = jax.random.key(config.seed + 1)

    def loss_of(params, batch, key):
        model = nnx.merge(graphdef, params)
        loss, metrics = task.loss_fn(model, batch, key)
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def train_step(state: dict, batch: dict[str, jax.Array]) -> tuple[dict, dict]:
        params = state["params"]
        key = jax.random.fold_in(base_key, state["step"])
        if accum == 1:
            (loss, metrics), grads = grad_fn(params, batch, key)
        else:
            micro = split_microbatches(batch, accum)

            def body(carry, xs):
                i, mb = xs
                (l, m), g = grad_fn(params, mb, jax.random.fold_in(key, i))
                acc_g, acc_l, acc_m = carry
                add = lambda a, b: a + b
                return (jax.tree.map(add, acc_g, g), acc_l + l, jax.tree.map(add, acc_m, m)), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            first_mb = jax.tree.map(lambda x: x[0], micro)
            abs_m = jax.eval_shape(lambda: loss_of(params, first_mb, key)[1])
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abs_m)
            (grads, loss, metrics), _ = jax.lax.scan(
                body, (zeros_g, jnp.zeros((), jnp.float32), zeros_m),
                (jnp.arange(accum), micro))
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss = loss / accum
            metrics = jax.tree.map(lambda m: m / accum, metrics)
        grad_norm = optax.global_norm(grads)
        finite = all_finite(loss, metrics, grad_norm)

        def keep(new, old):  # the update only where the step is finite
            return jnp.where(finite, new, old)

        new_params, opt_state = adamw_update(config.train, grads, state["opt_state"], params,
                                             grad_norm, finite)
        step = state["step"] + 1
        guard = count_nonfinite(state["nonfinite"], finite, step, config.train)
        out = dict(metrics)
        out.update(loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(new_params),
                   lr=schedule(state["step"]), nonfinite=1 - finite.astype(jnp.int32),
                   nonfinite_skipped=guard["skipped"])
        new_state = {"step": step, "params": new_params, "opt_state": opt_state,
                     "nonfinite": guard}
        if "ema" in state:
            d = config.train.ema_decay
            new_state["ema"] = jax.tree.map(lambda e, p: keep(d * e + (1.0 - d) * p, e),
                                            state["ema"], new_params)
        return new_state, out

    return train_step
