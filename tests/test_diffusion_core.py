"""Noise schedules, timestep embedding, ε/x₀/v conversions and the K-draw diffusion loss, against
plain NumPy re-computations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentlm_jax.diffusion import loss as L
from latentlm_jax.diffusion.embedding import timestep_embedding
from latentlm_jax.diffusion.schedules import make_schedule

T = 1000


def np_cosine_alpha_bar(t):
    """Closed form ᾱ_t = f((t+1)/T) / f(0) (valid where the 0.999 clip is inactive)."""
    f = lambda u: np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return f((np.asarray(t, np.float64) + 1) / T) / f(0.0)


def np_linear_alpha_bar(t):
    betas = np.linspace(1e-4, 0.02, T)
    return np.array([np.prod(1.0 - betas[: i + 1]) for i in np.atleast_1d(t)])


# -- schedules -----------------------------------------------------------------------------------
def test_cosine_alpha_bar_matches_closed_form():
    s = make_schedule("cosine")
    ts = np.array([0, 1, 10, 250, 500, 750, 900, 990, 998])
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[ts], np_cosine_alpha_bar(ts),
                               rtol=2e-5, atol=1e-9)
    betas = np.asarray(s.betas)
    assert betas.max() <= 0.999 + 1e-7 and betas[-1] == pytest.approx(0.999)  # clipped last step
    assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)


def test_linear_alpha_bar_matches_product():
    s = make_schedule("linear")
    ts = np.array([0, 1, 10, 250, 500, 999])
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[ts], np_linear_alpha_bar(ts),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(s.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_schedule("sigmoid")


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_alpha_sigma_lambda_at_integer_and_fractional_t(name):
    s = make_schedule(name)
    # float64 reference tables (the float32 ᾱ table loses 1 − ᾱ where ᾱ ≈ 1)
    ab = np_linear_alpha_bar(np.arange(T)) if name == "linear" else np.append(
        np_cosine_alpha_bar(np.arange(T - 1)), np_cosine_alpha_bar(T - 2) * 0.001)
    ti = jnp.array([0, 3, 500, 999])
    np.testing.assert_allclose(s.alpha_t(ti), np.sqrt(ab[[0, 3, 500, 999]]), rtol=1e-5)
    np.testing.assert_allclose(s.sigma_t(ti), np.sqrt(1 - ab[[0, 3, 500, 999]]), rtol=1e-4)
    # Float t at integer values is the table; halfway is the log-linear interpolation.
    np.testing.assert_allclose(s.alpha_t(ti.astype(jnp.float32)), s.alpha_t(ti), rtol=1e-6)
    half = np.exp(0.25 * (np.log(ab[500]) + np.log(ab[501])))
    np.testing.assert_allclose(s.alpha_t(jnp.float32(500.5)), half, rtol=1e-5)
    lam = np.asarray(s.lambda_t(jnp.arange(T)))
    np.testing.assert_allclose(lam, 0.5 * np.log(ab / (1 - ab)), rtol=1e-4, atol=1e-4)
    # α² + σ² = 1 everywhere, also between steps
    tf = jnp.linspace(0.0, 999.0, 77)
    np.testing.assert_allclose(s.alpha_t(tf) ** 2 + s.sigma_t(tf) ** 2, 1.0, atol=1e-6)
    # t_from_lambda inverts lambda_t
    tt = jnp.array([0.0, 12.3, 400.0, 871.6, 998.0])
    np.testing.assert_allclose(s.t_from_lambda(s.lambda_t(tt)), tt, atol=2e-2)


def test_q_sample_exact_and_moments():
    s = make_schedule("cosine")
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3)).astype(np.float32)
    t = np.array([0, 100, 400, 800, 999])
    eps = rng.normal(size=(5, 3)).astype(np.float32)
    ab = np_cosine_alpha_bar(np.minimum(t, 998))
    ab[-1] = float(s.alphas_cumprod[999])
    want = np.sqrt(ab)[:, None] * x0 + np.sqrt(1 - ab)[:, None] * eps
    np.testing.assert_allclose(s.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(eps)),
                               want, rtol=1e-5, atol=1e-6)
    # Moments of q(x_t | x_0) over many ε: mean √ᾱ x0, variance 1 − ᾱ.
    n = 200_000
    x0_one = np.array([1.5, -0.5], np.float32)
    eps_many = jax.random.normal(jax.random.key(1), (n, 2))
    xt = np.asarray(s.q_sample(jnp.broadcast_to(x0_one, (n, 2)), jnp.full((n,), 300), eps_many))
    ab300 = np_cosine_alpha_bar(300)
    np.testing.assert_allclose(xt.mean(0), np.sqrt(ab300) * x0_one, atol=5 * np.sqrt(1 / n))
    np.testing.assert_allclose(xt.var(0), 1 - ab300, rtol=0.02)


def test_schedule_is_a_pytree_through_jit():
    s = make_schedule("cosine")
    f = jax.jit(lambda sched, t: sched.alpha_t(t))
    np.testing.assert_allclose(f(s, jnp.int32(7)), s.alpha_t(7), rtol=1e-7)


# -- timestep embedding --------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [8, 256, 7])
def test_timestep_embedding_vs_numpy(dim):
    t = np.array([[0.0, 1.0, 17.0], [250.5, 999.0, 500.0]], np.float32)
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    args = t[..., None].astype(np.float64) * freqs
    want = np.concatenate([np.cos(args), np.sin(args)], -1)
    if dim % 2:
        want = np.concatenate([want, np.zeros_like(want[..., :1])], -1)
    got = timestep_embedding(jnp.asarray(t), dim)
    assert got.shape == (2, 3, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=2e-4)  # float32 argument rounding at t ≈ 1000


# -- conversions ---------------------------------------------------------------------------------
def test_eps_x0_v_conversions_invert_each_other():
    s = make_schedule("cosine")
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    eps = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    t = jnp.array([1, 50, 300, 600, 850, 950])
    a, sg = s.alpha_t(t)[:, None], s.sigma_t(t)[:, None]
    xt = a * x0 + sg * eps
    v = L.v_from_x0_eps(x0, eps, a, sg)
    np.testing.assert_allclose(v, np.asarray(a) * np.asarray(eps) - np.asarray(sg) * x0,
                               rtol=1e-6)
    close = lambda u, w: np.testing.assert_allclose(u, w, atol=2e-4, rtol=1e-4)
    close(L.eps_to_x0(xt, eps, a, sg), x0)
    close(L.x0_to_eps(xt, x0, a, sg), eps)
    close(L.v_to_x0(xt, v, a, sg), x0)
    close(L.v_to_eps(xt, v, a, sg), eps)
    close(L.eps_to_v(xt, eps, a, sg), v)
    close(L.x0_to_v(xt, x0, a, sg), v)
    for pred, p in (("eps", eps), ("v", v)):
        e_hat, x_hat = L.prediction_to_eps_x0(p, xt, a, sg, pred)
        close(e_hat, eps)
        close(x_hat, x0)
    with pytest.raises(ValueError, match="unknown prediction"):
        L.prediction_to_eps_x0(eps, xt, a, sg, "x0")


# -- the loss ------------------------------------------------------------------------------------
def _toy_head(w_x, w_c):
    """A deterministic stand-in for the head; broadcasts cond over the draw axis."""
    def head(x_t, t, cond):
        return jnp.tanh(x_t @ w_x + cond @ w_c + (t[..., None] / 1000.0))
    return head


def _np_head(w_x, w_c, x_t, t, cond):
    return np.tanh(x_t @ w_x + cond @ w_c + t[..., None] / 1000.0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_matches_numpy_recomputation(prediction):
    rng = np.random.default_rng(3)
    b, l, d, e, k = 2, 5, 3, 4, 4
    x0 = rng.normal(size=(b, l, d)).astype(np.float32)
    cond = rng.normal(size=(b, l, e)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
    w_x = rng.normal(size=(d, d)).astype(np.float32) * 0.5
    w_c = rng.normal(size=(e, d)).astype(np.float32) * 0.5
    s = make_schedule("cosine")
    seen = {}

    def head(x_t, t, c):
        seen["shapes"] = (x_t.shape, t.shape, c.shape)
        return _toy_head(jnp.asarray(w_x), jnp.asarray(w_c))(x_t, t, c)

    loss, aux = jax.jit(lambda r: L.diffusion_loss(
        head, jnp.asarray(x0), jnp.asarray(cond), jnp.asarray(mask), r, s, batch_mul=k,
        prediction=prediction))(jax.random.key(0))
    # The head saw K draws per position and the condition once (broadcast over draws).
    assert seen["shapes"] == ((b, k, l, d), (b, k, l), (b, 1, l, e))
    t = np.asarray(aux["t"])
    eps = np.asarray(aux["eps"], np.float64)
    assert t.shape == (b, k, l) and t.dtype == np.int32 and t.min() >= 0 and t.max() < T
    ab = np.asarray(s.alphas_cumprod, np.float64)[t][..., None]
    xt = np.sqrt(ab) * x0[:, None] + np.sqrt(1 - ab) * eps
    target = eps if prediction == "eps" else np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0[:, None]
    pred = _np_head(w_x, w_c, xt, t, cond[:, None])
    per = ((pred - target) ** 2).mean(-1)  # [b, k, l]
    want = (per * mask[:, None]).sum() / (k * mask.sum())
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], per, rtol=1e-4, atol=1e-6)
    assert float(aux["count"]) == mask.sum()


def test_loss_draws_are_independent_and_standard():
    s = make_schedule("cosine")
    n, d, k = 4096, 4, 4
    head = lambda x_t, t, c: jnp.zeros_like(x_t)
    loss, aux = L.diffusion_loss(head, jnp.zeros((n, d)), jnp.zeros((n, 2)), None,
                                 jax.random.key(5), s, batch_mul=k)
    t, eps = np.asarray(aux["t"]), np.asarray(aux["eps"])
    assert t.shape == (n, k) and eps.shape == (n, k, d)
    assert (t[:, 0] != t[:, 1]).mean() > 0.99  # independent draws per position
    assert abs(t.mean() - 499.5) < 15 and t.min() == 0 and t.max() == T - 1
    assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02
    # Zero prediction against ε: the loss is the mean of ε².
    np.testing.assert_allclose(float(loss), (eps ** 2).mean(), rtol=1e-5)


def test_loss_ignores_masked_positions_and_empty_mask_is_zero():
    s = make_schedule("linear")
    rng = np.random.default_rng(4)
    x0 = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    cond = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 6)) < 0.5)
    head = _toy_head(jnp.eye(3), jnp.eye(3))
    key = jax.random.key(9)
    base, _ = L.diffusion_loss(head, x0, cond, mask, key, s)
    x0_changed = jnp.where(mask[..., None], x0, 100.0)
    changed, _ = L.diffusion_loss(head, x0_changed, cond, mask, key, s)
    np.testing.assert_allclose(float(changed), float(base), rtol=1e-6)
    empty, _ = L.diffusion_loss(head, x0, cond, jnp.zeros((2, 6), bool), key, s)
    assert float(empty) == 0.0
    with pytest.raises(ValueError, match="unknown prediction"):
        L.diffusion_loss(head, x0, cond, mask, key, s, prediction="x0")
