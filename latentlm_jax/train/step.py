"""The pure train step: loss, gradients (with accumulation), AdamW update. Jitted by the trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import nnx

from latentlm_jax.train.optimizer import learning_rate_schedule
from latentlm_jax.train.task import Task


def split_microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """[B, ...] → [num, B/num, ...] with microbatch a = rows {i·num + a}, so each device's
    contiguous slice of the batch contributes equally to every
    microbatch (no cross-device reshuffle)."""

    def one(x):
        return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(one, batch)


def make_train_step(task: Task, config: mlc.ConfigDict, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation) -> Callable[..., Any]:
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
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        out = dict(metrics)
        out.update(loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(new_params), lr=schedule(state["step"]))
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        if "ema" in state:
            d = config.train.ema_decay
            new_state["ema"] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"],
                                            new_params)
        return new_state, out

    return train_step
