"""Per-token diffusion loss with K draws of (t, ε) per latent, and the ε / x₀ / v conversions.

With α = √ᾱ_t, σ = √(1 − ᾱ_t) (so α² + σ² = 1) and x_t = α x₀ + σ ε:

    x₀ = (x_t − σ ε) / α          ε = (x_t − α x₀) / σ
    v  = α ε − σ x₀                x₀ = α x_t − σ v          ε = σ x_t + α v
    v  = (ε − σ x_t) / α           v = (α x_t − x₀) / σ

``alpha``/``sigma`` below are arrays broadcastable against x, e.g.
``schedule.alpha_t(t)[..., None]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from latentlm_jax.diffusion.schedules import NoiseSchedule

PREDICTIONS = ("eps", "v")

HeadFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# -- parameterisation conversions ----------------------------------------------------------------
def eps_to_x0(x_t: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x_t - sigma * eps) / alpha


def x0_to_eps(x_t: jax.Array, x0: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """The v-prediction target α ε − σ x₀."""
    return alpha * eps - sigma * x0


def v_to_x0(x_t: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return alpha * x_t - sigma * v


def v_to_eps(x_t: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return sigma * x_t + alpha * v


def eps_to_v(x_t: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return (eps - sigma * x_t) / alpha


def x0_to_v(x_t: jax.Array, x0: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return (alpha * x_t - x0) / sigma


def prediction_to_eps_x0(pred: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array,
                         prediction: str) -> tuple[jax.Array, jax.Array]:
    """(ε̂, x̂₀) from a model output in the ``prediction`` parameterisation ("eps" | "v")."""
    if prediction == "eps":
        return pred, eps_to_x0(x_t, pred, alpha, sigma)
    if prediction == "v":
        return v_to_eps(x_t, pred, alpha, sigma), v_to_x0(x_t, pred, alpha, sigma)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


# -- the loss ------------------------------------------------------------------------------------
def draw_timesteps_and_noise(rng: jax.Array, shape: tuple[int, ...], num_timesteps: int
                             ) -> tuple[jax.Array, jax.Array]:
    """t ~ U{0, …, T−1} of shape ``shape[:-1]`` (int32) and ε ~ N(0, I) of ``shape`` (float32)."""
    t_key, eps_key = jax.random.split(rng)
    t = jax.random.randint(t_key, shape[:-1], 0, num_timesteps, dtype=jnp.int32)
    eps = jax.random.normal(eps_key, shape, jnp.float32)
    return t, eps


def diffusion_loss(head_fn: HeadFn, x0: jax.Array, cond: jax.Array, mask: jax.Array | None,
                   rng: jax.Array, schedule: NoiseSchedule, *, batch_mul: int = 4,
                   prediction: str = "eps") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean-squared error of the head's ε (or v) prediction, K = ``batch_mul`` draws per latent.

    Shapes: ``x0`` [N, D] or [B, L, D]; ``cond`` the same leading dims with width E (the backbone's
    hidden states, computed once); ``mask`` the leading dims (bool; None = all positions).

    A draw axis of size K is inserted after the first axis: the head is called as
    ``head_fn(x_t [B, K, L, D], t [B, K, L], cond [B, 1, L, E])`` (for [N, D] inputs: [N, K, D],
    [N, K], [N, 1, E]), so ``head_fn`` must broadcast ``cond`` over the draw axis — the head's
    condition projection then runs once per position, not K times. Keeping the batch axis first
    leaves a batch-sharded layout unchanged.

    Returns ``(loss, aux)``: the loss is the squared error averaged over latent dims, draws and
    masked positions (0 when the mask is empty); ``aux`` holds the draws ``t`` (int32 [B, K, L])
    and ``eps``, the target, the per-draw ``mse`` [B, K, L] and ``count`` (masked positions).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    if x0.ndim not in (2, 3) or cond.shape[:-1] != x0.shape[:-1]:
        raise ValueError(f"x0 {x0.shape} must be [N, D] or [B, L, D] and cond {cond.shape} "
                         "must share its leading dims")
    k = batch_mul
    lead = x0.shape[:-1]
    if mask is None:
        mask = jnp.ones(lead, bool)
    x0_k = jnp.broadcast_to(x0[:, None].astype(jnp.float32),
                            (lead[0], k, *lead[1:], x0.shape[-1]))
    t, eps = draw_timesteps_and_noise(rng, x0_k.shape, schedule.num_timesteps)
    alpha = schedule.alpha_t(t)[..., None]
    sigma = schedule.sigma_t(t)[..., None]
    x_t = alpha * x0_k + sigma * eps
    target = eps if prediction == "eps" else v_from_x0_eps(x0_k, eps, alpha, sigma)
    pred = head_fn(x_t, t, cond[:, None])
    mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [B, K, L]
    weight = mask[:, None].astype(jnp.float32)
    count = jnp.sum(mask.astype(jnp.float32))
    loss = jnp.sum(mse * weight) / (k * jnp.maximum(count, 1.0))
    return loss, {"t": t, "eps": eps, "target": target, "mse": mse, "count": count}
