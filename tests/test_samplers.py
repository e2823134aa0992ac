"""Samplers on a 2-D Gaussian mixture with the *analytic* optimal ε-predictor (no training).

If x₀ ~ Σ_k π_k N(μ_k, Σ_k) then x_t ~ Σ_k π_k N(α μ_k, α² Σ_k + σ² I), whose score is known in
closed form; ε*(x_t) = −σ ∇log p(x_t). Every sampler should then reproduce the mixture.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentlm_jax.diffusion import samplers
from latentlm_jax.diffusion.schedules import make_schedule

PI = np.array([0.5, 0.3, 0.2])
MU = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]])
COV = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]],
                [[0.25, -0.1], [-0.1, 0.15]]])
# Another mixture, the "unconditional" model in the guidance tests.
PI_U = np.array([0.5, 0.5])
MU_U = np.array([[0.0, 2.0], [1.0, -1.0]])
COV_U = np.array([np.eye(2) * 0.5, np.eye(2) * 0.2])

SCHED = make_schedule("cosine")
N = 20_000


def mixture_moments(pi, mu, cov):
    m = (pi[:, None] * mu).sum(0)
    c = sum(p * (s + np.outer(u, u)) for p, u, s in zip(pi, mu, cov, strict=True))
    return m, c - np.outer(m, m)


def gmm_model(pi, mu, cov, schedule=SCHED, prediction="eps"):
    """Optimal ε (or v) prediction of the mixture at scalar time t."""
    pi, mu, cov = (jnp.asarray(a, jnp.float32) for a in (pi, mu, cov))

    def fn(x, t):
        a, s = schedule.alpha_t(t), schedule.sigma_t(t)
        c = a ** 2 * cov + s ** 2 * jnp.eye(2)  # [K, 2, 2], symmetric
        c00, c01, c11 = c[:, 0, 0], c[:, 0, 1], c[:, 1, 1]
        det = c00 * c11 - c01 * c01
        i00, i01, i11 = c11 / det, -c01 / det, c00 / det  # 2×2 inverse in closed form
        d0 = x[:, :1] - a * mu[:, 0]  # [N, K]
        d1 = x[:, 1:] - a * mu[:, 1]
        logp = jnp.log(pi) - 0.5 * (i00 * d0 * d0 + 2 * i01 * d0 * d1 + i11 * d1 * d1) \
            - 0.5 * jnp.log(det)
        w = jax.nn.softmax(logp, axis=-1)
        g0 = jnp.sum(w * (i00 * d0 + i01 * d1), axis=-1)  # −score
        g1 = jnp.sum(w * (i01 * d0 + i11 * d1), axis=-1)
        eps = s * jnp.stack([g0, g1], axis=-1)  # ε* = −σ · score
        return eps if prediction == "eps" else (eps - s * x) / a  # v = (ε − σ x_t)/α
    return fn


COND = gmm_model(PI, MU, COV)
UNCOND = gmm_model(PI_U, MU_U, COV_U)


@functools.partial(jax.jit, static_argnames=("method", "num_steps", "n", "model", "kw"))
def _run(key, temperature, method, num_steps, n=N, model=COND, kw=()):
    return samplers.sample(method, model, (n, 2), key, num_steps=num_steps, schedule=SCHED,
                           temperature=temperature, **dict(kw))


def run(method, num_steps, seed, n=N, model=COND, temperature=1.0, **kw):
    """Samples as float64 NumPy; temperature is traced (no recompilation), the rest static."""
    return np.asarray(_run(jax.random.key(seed), jnp.float32(temperature), method, num_steps, n,
                           model, tuple(sorted(kw.items()))), np.float64)


@pytest.fixture(scope="module")
def ddpm_ref():
    return run("ddpm", 1000, seed=1)


def _moments_gap(x, ref):
    return (np.abs(x.mean(0) - ref.mean(0)).max(), np.abs(np.cov(x.T) - np.cov(ref.T)).max())


def test_ddpm_1000_matches_the_mixture(ddpm_ref):
    m, c = mixture_moments(PI, MU, COV)
    # Monte-Carlo standard errors at N = 20k: mean ≈ 0.013, covariance entries ≈ 0.03.
    assert np.abs(ddpm_ref.mean(0) - m).max() < 0.04
    assert np.abs(np.cov(ddpm_ref.T) - c).max() < 0.1


@pytest.mark.parametrize("method,steps,mean_tol,cov_tol", [
    ("dpm++2m", 20, 0.05, 0.12),  # measured 0.022 / 0.057
    ("ddim", 50, 0.05, 0.15),  # measured 0.021 / 0.087 (first order: slightly under-dispersed)
])
def test_fast_solvers_match_ddpm_statistics(ddpm_ref, method, steps, mean_tol, cov_tol):
    x = run(method, steps, seed=2)
    dm, dc = _moments_gap(x, ddpm_ref)
    assert dm < mean_tol and dc < cov_tol, (dm, dc)


@pytest.mark.slow
def test_dpm_solver_is_second_order_ddim_first_order():
    """Per-sample error against a 400-step solution from the same noise, as steps double."""
    n = 2000
    ref = run("dpm++2m", 400, seed=3, n=n)
    err = lambda method, m: np.linalg.norm(run(method, m, seed=3, n=n) - ref, axis=1).mean()
    dpm = [err("dpm++2m", m) for m in (10, 20, 40)]
    ddim = [err("ddim", m) for m in (10, 20)]
    assert dpm[0] / dpm[1] > 2.8 and dpm[1] / dpm[2] > 2.8, dpm  # ≈ 3.7 measured: 2nd order
    assert 1.6 < ddim[0] / ddim[1] < 2.6, ddim  # ≈ 2: 1st order
    assert dpm[1] < ddim[1] / 2


def test_v_prediction_gives_the_same_samples():
    v_model = gmm_model(PI, MU, COV, prediction="v")
    for method in ("dpm++2m", "ddim"):
        a = run(method, 20, seed=4, n=500)
        b = run(method, 20, seed=4, n=500, model=v_model, prediction="v")
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_ddpm_equals_ddim_with_eta_one():
    a = run("ddpm", 50, seed=5, n=500)
    b = run("ddim", 50, seed=5, n=500, eta=1.0)
    np.testing.assert_allclose(a, b, atol=1e-3)
    c = run("ddim", 50, seed=5, n=500)
    assert np.abs(a - c).max() > 0.1  # and η matters


@jax.jit
def _guided(key, scale):
    return samplers.sample("dpm++2m", samplers.cfg_model_fn(COND, UNCOND, scale), (300, 2), key,
                           num_steps=10, schedule=SCHED)


def test_guide_is_exactly_the_conditional_at_one_and_the_unconditional_at_zero():
    rng = np.random.default_rng(0)
    c, u = ((rng.normal(size=(64, 16)) * 10.0 ** rng.integers(-3, 3, (64, 16))).astype(np.float32)
            for _ in range(2))
    assert (u + np.float32(1.0) * (c - u) != c).any()  # u + s(c − u) would not be exact here
    guided = jax.jit(samplers.guide)
    np.testing.assert_array_equal(guided(c, u, jnp.float32(1.0)), c)
    np.testing.assert_array_equal(guided(c, u, jnp.float32(0.0)), u)


def test_guidance_scale_one_is_conditional_zero_is_unconditional():
    # Two different compiled programs: their sampler arithmetic may round differently (XLA's
    # fusion choices), so equal up to float32 rounding; guide() itself is exact (test above).
    for scale, want_model in ((1.0, COND), (0.0, UNCOND)):
        a = np.asarray(_guided(jax.random.key(6), jnp.float32(scale)), np.float64)
        np.testing.assert_allclose(a, run("dpm++2m", 10, seed=6, n=300, model=want_model),
                                   rtol=1e-5, atol=1e-6)
    # In between, the guided samples differ from both.
    mid = np.asarray(_guided(jax.random.key(6), jnp.float32(0.5)), np.float64)
    assert np.abs(mid - run("dpm++2m", 10, seed=6, n=300)).max() > 0.1


def test_batched_guidance_matches_two_calls():
    def joint(x2, t):  # first half conditional rows, second half unconditional rows
        n = x2.shape[0] // 2
        return jnp.concatenate([COND(x2[:n], t), UNCOND(x2[n:], t)], axis=0)

    x = jax.random.normal(jax.random.key(0), (64, 2))
    t = jnp.float32(400.0)
    batched = jax.jit(lambda x, t, s: samplers.batched_cfg_model_fn(joint, s)(x, t))
    c, u = (np.asarray(jax.jit(f)(x, t)) for f in (COND, UNCOND))
    for scale in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(batched(x, t, jnp.float32(scale)), u + scale * (c - u),
                                   rtol=1e-5, atol=1e-6)
    a = run("dpm++2m", 10, seed=7, n=300, model=samplers.batched_cfg_model_fn(joint, 3.0))
    b = run("dpm++2m", 10, seed=7, n=300, model=samplers.cfg_model_fn(COND, UNCOND, 3.0))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_temperature():
    # Temperature 0 with DDIM: x_T = 0, no injected noise -> the same sample for every key and row.
    a = run("ddim", 20, seed=8, n=16, temperature=0.0)
    b = run("ddim", 20, seed=9, n=16, temperature=0.0)
    np.testing.assert_array_equal(a, b)
    assert np.ptp(a, axis=0).max() == 0.0
    # Lower temperature concentrates DDPM samples (initial and injected noise both scaled).
    hot = run("ddpm", 100, seed=10, n=4000)
    cold = run("ddpm", 100, seed=10, n=4000, temperature=0.5)
    assert np.trace(np.cov(cold.T)) < 0.8 * np.trace(np.cov(hot.T))


def test_timestep_grids():
    g = np.asarray(samplers.timesteps(SCHED, 20, "time", lambda_min=None))
    assert g[0] == 999 and g[-1] == 49 and np.all(np.diff(g) < 0) and np.all(g == np.round(g))
    np.testing.assert_array_equal(samplers.timesteps(SCHED, 1000, "time"), np.arange(999, -1, -1))
    gl = samplers.timesteps(SCHED, 10, "logsnr", lambda_min=None)
    lam = np.asarray(SCHED.lambda_t(gl))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=0.02)  # uniform in λ
    assert float(gl[0]) == 999.0
    # By default the cosine grids start where λ ≥ −5.1 (t = 995), the linear ones at T − 1.
    start = float(samplers.start_time(SCHED))
    assert SCHED.lambda_t(start) >= -5.1 > SCHED.lambda_t(start + 1)
    assert start == 995.0 and float(samplers.timesteps(SCHED, 20)[0]) == start
    assert float(samplers.timesteps(SCHED, 10, "logsnr")[0]) == start
    assert float(samplers.timesteps(make_schedule("linear"), 20)[0]) == 999.0
    jitted = jax.jit(lambda s: samplers.timesteps(s, 5))(SCHED)  # traceable schedule
    np.testing.assert_array_equal(jitted, samplers.timesteps(SCHED, 5))
    with pytest.raises(ValueError):
        samplers.timesteps(SCHED, 1001, "time")
    with pytest.raises(ValueError, match="unknown spacing"):
        samplers.timesteps(SCHED, 10, "karras")
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.sample("euler", COND, (2, 2), jax.random.key(0), num_steps=5, schedule=SCHED)


@pytest.mark.parametrize("method", ["dpm++2m", "ddim"])
def test_a_slightly_wrong_eps_model_does_not_blow_up(method):
    """An ε error of 0.02 at the cosine schedule's end (α ≈ 5e-5) becomes a data error of ~400
    when the grid starts at T − 1; from λ ≥ −5.1 the samples stay near the data."""
    def biased(x, t):
        return COND(x, t) + 0.02

    def mean_error(lambda_min):
        x = samplers.sample(method, biased, (2000, 2), jax.random.key(0), num_steps=20,
                            schedule=SCHED, lambda_min=lambda_min)
        return float(np.linalg.norm(np.asarray(x).mean(0) - mixture_moments(PI, MU, COV)[0]))

    assert mean_error(None) > 10.0  # what generation did before: samples far off the data
    assert mean_error(samplers.LAMBDA_MIN) < 1.0
