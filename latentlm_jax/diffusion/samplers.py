"""Samplers for a denoiser ``model_fn(x_t, t) -> prediction`` (ε or v, per ``prediction``).

``t`` is passed as a float32 scalar in schedule steps (the same for every row); it is an integer
value except on log-SNR-spaced grids, where the schedule is interpolated (see ``schedules``).

Every method makes M = ``num_steps`` model evaluations on a decreasing grid
τ_0 = T−1 > τ_1 > … > τ_{M−1} (see :func:`timesteps`); step i moves from τ_i to τ_{i+1}, and the
last step, from τ_{M−1} to zero noise (α = 1, σ = 0), returns the predicted x̂₀ at τ_{M−1}.

* ``ddpm``: ancestral sampling from the posterior q(x_{τ_{i+1}} | x_{τ_i}, x̂₀) of the respaced
  chain (β' = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i+1}}, variance β̃ = β'(1 − ᾱ_{τ_{i+1}})/(1 − ᾱ_{τ_i})); with
  M = T it is the original 1000-step DDPM.
* ``ddim``: x_s = α_s x̂₀ + √(σ_s² − c²) ε̂ + c z with c = η (σ_s/σ_t) √(1 − α_t²/α_s²)
  (s = τ_{i+1}, t = τ_i); η = 0 is deterministic, η = 1 equals ``ddpm``.
* ``dpm++2m``: DPM-Solver++(2M), data prediction, multistep; first step first-order, the final
  step (to σ = 0) first-order, second-order in between.

``temperature`` scales the initial noise x_{τ_0} ~ N(0, temperature² I) and the noise injected by
``ddpm`` / ``ddim`` with η > 0. Loops run under ``lax.scan``; everything is jit-friendly.

With ``step_indexed=True`` the model function is called as ``model_fn(x_t, t, i)``, i the index of
t in the grid (:func:`sampling_grid`): a caller can then precompute whatever depends on t alone
for all steps at once (the diffusion head's adaLN modulations) and slice it per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from latentlm_jax.diffusion.loss import prediction_to_eps_x0
from latentlm_jax.diffusion.schedules import NoiseSchedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
IndexedModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x_t, t, step index)

METHODS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("time", "logsnr")
DEFAULT_SPACING = {"ddpm": "time", "ddim": "time", "dpm++2m": "time"}


# -- guidance ------------------------------------------------------------------------------------
def guide(cond_out: jax.Array, uncond_out: jax.Array, scale: float | jax.Array) -> jax.Array:
    """u + s(c − u), written s·c + (1 − s)·u so s = 1 gives c and s = 0 gives u exactly.

    Linear in the prediction, so it applies unchanged to ε- and v-predictions."""
    return scale * cond_out + (1.0 - scale) * uncond_out


def cfg_model_fn(cond_fn: ModelFn, uncond_fn: ModelFn, scale: float | jax.Array) -> ModelFn:
    """Classifier-free guidance from two separate model functions."""
    return lambda x_t, t: guide(cond_fn(x_t, t), uncond_fn(x_t, t), scale)


def batched_cfg_model_fn(joint_fn: ModelFn, scale: float | jax.Array) -> ModelFn:
    """Guidance with one model call: ``joint_fn`` gets x_t stacked twice, [2N, …], and returns
    the conditional outputs in its first N rows and the unconditional ones in the last N (a
    step-indexed ``joint_fn`` gives a step-indexed guided function)."""
    def fn(x_t: jax.Array, t: jax.Array, *step: jax.Array) -> jax.Array:
        out = joint_fn(jnp.concatenate([x_t, x_t], axis=0), t, *step)
        n = x_t.shape[0]
        return guide(out[:n], out[n:], scale)
    return fn


# -- grids ---------------------------------------------------------------------------------------
LAMBDA_MIN = -5.1  # default start of every grid: the largest t with λ_t = ½ log SNR_t ≥ this


def start_time(schedule: NoiseSchedule, lambda_min: float | None = LAMBDA_MIN) -> jax.Array:
    """First evaluation time (float32 scalar, traceable): T−1, or the last integer t with
    λ_t ≥ ``lambda_min`` when λ_{T−1} is below it.

    Why: an ε-model's data estimate x̂₀ = (x_t − σ_t ε̂)/α_t multiplies its error by 1/α_t. The
    cosine schedule ends at α_{T−1} ≈ 5e-5 (β capped at 0.999), so a first step taken there turns
    an ε error of 0.01 into a data error of ~200, which the next step carries over: samples of
    size 10²–10⁴. Starting where λ ≥ −5.1 (α ≈ 0.006, t = 995 for cosine; the linear schedule's
    λ_{T−1} ≈ −5.07 is left as it is) fixes that; starting from N(0, I) there is off by < 4e-5
    in variance. ``None`` starts at T−1 whatever the schedule.
    """
    if lambda_min is None:
        return jnp.float32(schedule.num_timesteps - 1)
    # t_from_lambda saturates at T−1 for a λ below λ_{T−1}, so this is T−1 when nothing clips.
    return jnp.floor(schedule.t_from_lambda(jnp.float32(lambda_min)))


def timesteps(schedule: NoiseSchedule, num_steps: int, spacing: str = "time",
              lambda_min: float | None = LAMBDA_MIN) -> jax.Array:
    """Decreasing float32 grid of the ``num_steps`` evaluation times τ_0 = t_s > … > τ_{M−1},
    t_s = :func:`start_time` (T−1 unless the schedule's end is too noisy to start from).

    "time": τ_i = round((t_s + 1)(1 − i/M)) − 1 (the "trailing" spacing): integer steps, as in
    training; M = T gives every step 999 … 0 (t_s = T − 1), i.e. the original DDPM chain.
    "logsnr": λ(τ_i) uniform between λ(t_s) and λ_0 over M + 1 points, the last dropped (it is
    where the final step lands, replaced by σ = 0); fractional t.
    """
    t_count = schedule.num_timesteps
    if not 1 <= num_steps <= t_count:
        raise ValueError(f"num_steps must be in [1, {t_count}], got {num_steps}")
    # The full chain (M = T) is the original DDPM, whose first update weighs x̂₀ by a β-sized
    # coefficient: it keeps every step.
    t_start = start_time(schedule, None if num_steps == t_count else lambda_min)
    if spacing == "time":
        i = jnp.arange(num_steps, dtype=jnp.float32)
        span = t_start + 1.0
        return jnp.maximum(jnp.round(span - i * (span / num_steps)) - 1.0, 0.0)
    if spacing == "logsnr":
        lam = jnp.linspace(schedule.lambda_t(t_start), schedule.lambda_t(0), num_steps + 1)
        t = schedule.t_from_lambda(lam[:-1])
        return t.at[0].set(t_start).astype(jnp.float32)
    raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")


# -- solvers -------------------------------------------------------------------------------------
def _indexed(model_fn: ModelFn | IndexedModelFn, step_indexed: bool) -> IndexedModelFn:
    return model_fn if step_indexed else (lambda x, t, i: model_fn(x, t))


def _denoise(model_fn: IndexedModelFn, x: jax.Array, t: jax.Array, i: jax.Array | int,
             schedule: NoiseSchedule, prediction: str) -> tuple[jax.Array, jax.Array]:
    pred = model_fn(x, t, jnp.int32(i)).astype(jnp.float32)
    return prediction_to_eps_x0(pred, x, schedule.alpha_t(t), schedule.sigma_t(t), prediction)


def _init(shape, key, temperature, grid_len) -> tuple[jax.Array, jax.Array]:
    init_key, step_key = jax.random.split(key)
    x = temperature * jax.random.normal(init_key, shape, jnp.float32)
    return x, jax.random.split(step_key, max(grid_len - 1, 1))


def ddim(model_fn: ModelFn, shape: tuple[int, ...], key: jax.Array, *, schedule: NoiseSchedule,
         num_steps: int = 50, eta: float = 0.0, temperature: float = 1.0,
         prediction: str = "eps", spacing: str = "time",
         lambda_min: float | None = LAMBDA_MIN, step_indexed: bool = False) -> jax.Array:
    """DDIM (Song et al. 2021) with stochasticity η; see the module docstring."""
    grid = timesteps(schedule, num_steps, spacing, lambda_min)
    x, keys = _init(shape, key, temperature, num_steps)
    model_fn = _indexed(model_fn, step_indexed)

    def step(x, inp):
        i, t, s, k = inp
        eps, x0 = _denoise(model_fn, x, t, i, schedule, prediction)
        a_t, a_s = schedule.alpha_t(t), schedule.alpha_t(s)
        sig_t, sig_s = schedule.sigma_t(t), schedule.sigma_t(s)
        c = eta * (sig_s / sig_t) * jnp.sqrt(jnp.maximum(1.0 - (a_t / a_s) ** 2, 0.0))
        dir_scale = jnp.sqrt(jnp.maximum(sig_s ** 2 - c ** 2, 0.0))
        noise = jax.random.normal(k, x.shape, jnp.float32)
        return a_s * x0 + dir_scale * eps + temperature * c * noise, None

    steps = jnp.arange(num_steps - 1)
    x, _ = jax.lax.scan(step, x, (steps, grid[:-1], grid[1:], keys[: num_steps - 1]))
    return _denoise(model_fn, x, grid[-1], num_steps - 1, schedule, prediction)[1]


def ddpm(model_fn: ModelFn, shape: tuple[int, ...], key: jax.Array, *, schedule: NoiseSchedule,
         num_steps: int = 1000, temperature: float = 1.0, prediction: str = "eps",
         spacing: str = "time", lambda_min: float | None = LAMBDA_MIN,
         step_indexed: bool = False) -> jax.Array:
    """Ancestral sampling on the (respaced) chain with the posterior variance β̃."""
    grid = timesteps(schedule, num_steps, spacing, lambda_min)
    x, keys = _init(shape, key, temperature, num_steps)
    model_fn = _indexed(model_fn, step_indexed)

    def step(x, inp):
        i, t, s, k = inp
        _, x0 = _denoise(model_fn, x, t, i, schedule, prediction)
        la_t, la_s = schedule.log_alpha_bar(t), schedule.log_alpha_bar(s)
        beta = -jnp.expm1(la_t - la_s)  # β' = 1 − ᾱ_t/ᾱ_s, the respaced step
        one_m_t, one_m_s = -jnp.expm1(la_t), -jnp.expm1(la_s)  # 1 − ᾱ
        mean = (jnp.exp(0.5 * la_s) * beta / one_m_t) * x0 + (
            jnp.exp(0.5 * (la_t - la_s)) * one_m_s / one_m_t) * x
        var = beta * one_m_s / one_m_t
        noise = jax.random.normal(k, x.shape, jnp.float32)
        return mean + temperature * jnp.sqrt(var) * noise, None

    steps = jnp.arange(num_steps - 1)
    x, _ = jax.lax.scan(step, x, (steps, grid[:-1], grid[1:], keys[: num_steps - 1]))
    return _denoise(model_fn, x, grid[-1], num_steps - 1, schedule, prediction)[1]


def dpm_solver_pp_2m(model_fn: ModelFn, shape: tuple[int, ...], key: jax.Array, *,
                     schedule: NoiseSchedule, num_steps: int = 20, temperature: float = 1.0,
                     prediction: str = "eps", spacing: str = "time",
                     lambda_min: float | None = LAMBDA_MIN,
                     step_indexed: bool = False) -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, h_i = λ_{τ_{i+1}} − λ_{τ_i}:

        x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} (e^{−h_i} − 1) D_i,
        D_i = x̂₀_i + (1 / 2r_i)(x̂₀_i − x̂₀_{i−1}),   r_i = h_{i−1} / h_i,

    with D_0 = x̂₀_0 (first step first-order) and the final step to σ = 0 returning x̂₀."""
    grid = timesteps(schedule, num_steps, spacing, lambda_min)
    x, _ = _init(shape, key, temperature, num_steps)
    model_fn = _indexed(model_fn, step_indexed)

    def step(carry, inp):
        x, x0_prev, h_prev = carry
        i, t, s = inp
        _, x0 = _denoise(model_fn, x, t, i, schedule, prediction)
        h = schedule.lambda_t(s) - schedule.lambda_t(t)
        first = i == 0
        r = jnp.where(first, 1.0, h_prev / h)
        d = x0 + jnp.where(first, 0.0, 0.5 / r) * (x0 - x0_prev)
        ratio = schedule.sigma_t(s) / schedule.sigma_t(t)
        x_next = ratio * x - schedule.alpha_t(s) * jnp.expm1(-h) * d
        return (x_next, x0, h), None

    carry = (x, jnp.zeros_like(x), jnp.float32(1.0))
    inputs = (jnp.arange(num_steps - 1), grid[:-1], grid[1:])
    (x, _, _), _ = jax.lax.scan(step, carry, inputs)
    return _denoise(model_fn, x, grid[-1], num_steps - 1, schedule, prediction)[1]


def sampling_grid(method: str, schedule: NoiseSchedule, num_steps: int,
                  spacing: str | None = None, lambda_min: float | None = LAMBDA_MIN) -> jax.Array:
    """The evaluation times :func:`sample` uses for these arguments (step i evaluates at [i])."""
    return timesteps(schedule, num_steps, spacing or DEFAULT_SPACING.get(method, "time"),
                     lambda_min)


def sample(method: str, model_fn: ModelFn | IndexedModelFn, shape: tuple[int, ...],
           key: jax.Array, *, num_steps: int, schedule: NoiseSchedule, temperature: float = 1.0,
           prediction: str = "eps", spacing: str | None = None, eta: float = 0.0,
           lambda_min: float | None = LAMBDA_MIN, step_indexed: bool = False) -> jax.Array:
    """Common entry: ``method`` ∈ {"ddpm", "ddim", "dpm++2m"}; ``spacing`` None = the method's
    default (``DEFAULT_SPACING``); ``eta`` is used by DDIM only; ``lambda_min``: see
    :func:`start_time`; ``step_indexed``: see the module docstring. Returns x₀ samples [shape]."""
    spacing = spacing or DEFAULT_SPACING.get(method, "time")
    kw = dict(schedule=schedule, num_steps=num_steps, temperature=temperature,
              prediction=prediction, spacing=spacing, lambda_min=lambda_min,
              step_indexed=step_indexed)
    if method == "ddpm":
        return ddpm(model_fn, shape, key, **kw)
    if method == "ddim":
        return ddim(model_fn, shape, key, eta=eta, **kw)
    if method == "dpm++2m":
        return dpm_solver_pp_2m(model_fn, shape, key, **kw)
    raise ValueError(f"unknown sampler {method!r}; expected one of {METHODS}")
