"""Discrete-time variance-preserving noise schedules (T = 1000 steps by default).

Index t ∈ {0, …, T−1}; ``alphas_cumprod[t] = ᾱ_t = ∏_{j≤t} (1 − β_j)`` and
``x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε``. Samplers also need the schedule between integer steps:
there log ᾱ is interpolated linearly in t (as DPM-Solver does for discrete-time models), so
``alpha_t``/``sigma_t``/``lambda_t`` accept float t and agree exactly with the tables at integers.

* cosine (Nichol & Dhariwal 2021): f(u) = cos²((u + s)/(1 + s) · π/2), s = 0.008,
  β_t = min(1 − f((t+1)/T) / f(t/T), 0.999).
* linear (Ho et al. 2020): β_t = linspace(1e-4, 0.02, T).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Tables of a discrete schedule (float32 arrays [T]); a pytree, so it can cross ``jit``."""

    betas: jax.Array
    alphas_cumprod: jax.Array
    log_alphas_cumprod: jax.Array  # computed in float64 before the cast: precise where ᾱ ≈ 1

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    # -- values at (possibly fractional) t ----------------------------------------------------
    def log_alpha_bar(self, t: jax.Array) -> jax.Array:
        """log ᾱ_t; integer t indexes the table, float t interpolates it linearly."""
        t = jnp.asarray(t)
        table = self.log_alphas_cumprod
        if jnp.issubdtype(t.dtype, jnp.integer):
            return table[jnp.clip(t, 0, self.num_timesteps - 1)]
        t = jnp.clip(t.astype(jnp.float32), 0.0, self.num_timesteps - 1.0)
        lo = jnp.floor(t).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, self.num_timesteps - 1)
        w = t - lo.astype(jnp.float32)
        return (1.0 - w) * table[lo] + w * table[hi]

    def alpha_t(self, t: jax.Array) -> jax.Array:
        """α_t = √ᾱ_t (signal scale)."""
        return jnp.exp(0.5 * self.log_alpha_bar(t))

    def sigma_t(self, t: jax.Array) -> jax.Array:
        """σ_t = √(1 − ᾱ_t) (noise scale); ``-expm1`` keeps it precise where ᾱ ≈ 1."""
        return jnp.sqrt(-jnp.expm1(self.log_alpha_bar(t)))

    def lambda_t(self, t: jax.Array) -> jax.Array:
        """λ_t = log(α_t / σ_t) = ½ log SNR_t, decreasing in t."""
        la = self.log_alpha_bar(t)
        return 0.5 * (la - jnp.log(-jnp.expm1(la)))

    def t_from_lambda(self, lam: jax.Array) -> jax.Array:
        """Float t with λ_t ≈ ``lam``: piecewise-linear inverse through the integer steps."""
        steps = jnp.arange(self.num_timesteps, dtype=jnp.float32)
        lams = self.lambda_t(jnp.arange(self.num_timesteps))
        # jnp.interp needs increasing abscissae; λ decreases with t.
        return jnp.interp(lam, lams[::-1], steps[::-1])

    def q_sample(self, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
        """x_t = α_t x_0 + σ_t ε, with t of shape ``x0.shape[:-1]`` (or broadcastable)."""
        a = self.alpha_t(t)[..., None]
        s = self.sigma_t(t)[..., None]
        return (a * x0.astype(jnp.float32) + s * eps.astype(jnp.float32)).astype(x0.dtype)


jax.tree_util.register_dataclass(
    NoiseSchedule, data_fields=["betas", "alphas_cumprod", "log_alphas_cumprod"], meta_fields=[])


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_t = min(1 − f((t+1)/T)/f(t/T), max_beta) with f(u) = cos²((u+s)/(1+s)·π/2); float64."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def linear_betas(num_timesteps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    return np.linspace(start, end, num_timesteps, dtype=np.float64)


def make_schedule(name: str = "cosine", num_timesteps: int = 1000) -> NoiseSchedule:
    """The named schedule ("cosine" | "linear") as float32 tables."""
    if name == "cosine":
        betas = cosine_betas(num_timesteps)
    elif name == "linear":
        betas = linear_betas(num_timesteps)
    else:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {SCHEDULES}")
    log_ac = np.cumsum(np.log1p(-betas))
    return NoiseSchedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(np.exp(log_ac), jnp.float32),
        log_alphas_cumprod=jnp.asarray(log_ac, jnp.float32),
    )
