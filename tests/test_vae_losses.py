"""VAE loss terms against plain NumPy references, and the adversarial switch's gradient routing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.vae import losses
from latentlm_jax.vae.discriminator import (
    PatchDiscriminator,
    adversarial_terms,
    hinge_d_loss,
    hinge_g_loss,
)


def _rand(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def test_reconstruction_l1_l2_match_numpy():
    x, y = _rand(0, (3, 8, 8, 3)), _rand(1, (3, 8, 8, 3))
    np.testing.assert_allclose(losses.reconstruction_loss(x, y, "l1"), np.abs(x - y).mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.reconstruction_loss(x, y, "l2"), ((x - y) ** 2).mean(),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="l1"):
        losses.reconstruction_loss(x, y, "huber")


def test_mu_penalty_and_kl_match_numpy():
    mu, logvar = _rand(2, (4, 4, 4, 8)), _rand(3, (4, 4, 4, 8), 0.5)
    np.testing.assert_allclose(losses.mu_penalty(mu), (mu**2).mean(), rtol=1e-6)
    ref = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)
    np.testing.assert_allclose(losses.kl_divergence(mu, logvar), ref.mean(), rtol=1e-5)
    zeros = np.zeros((2, 3), np.float32)
    assert float(losses.kl_divergence(zeros, zeros)) == 0.0


def _np_stft_mag(x, n_fft, hop):
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = [x[:, s:s + n_fft] * window for s in range(0, x.shape[1] - n_fft + 1, hop)]
    return np.abs(np.fft.rfft(np.stack(frames, axis=1), axis=-1))


def test_stft_magnitude_matches_numpy_fft():
    t = np.arange(1000) / 16000
    x = np.stack([np.sin(2 * np.pi * 440 * t), _rand(4, (1000,), 0.3)]).astype(np.float32)
    got = np.asarray(losses.stft_magnitude(x, 128, 32))
    ref = _np_stft_mag(x.astype(np.float64), 128, 32)
    assert got.shape == (2, 1 + (1000 - 128) // 32, 65)
    np.testing.assert_allclose(got, np.sqrt(ref**2 + losses.MAG_FLOOR**2), rtol=1e-4, atol=1e-4)
    # The 440 Hz tone peaks in bin round(440 / (16000 / 128)) = 4 (3.52 → bins 3-4).
    assert got[0].mean(axis=0).argmax() in (3, 4)


def test_stft_loss_matches_numpy_and_is_zero_on_identity():
    x, y = _rand(5, (2, 600), 0.3), _rand(6, (2, 600), 0.3)
    sc, logm = losses.stft_loss(x, y, 64, 16)
    s, s_hat = (np.sqrt(_np_stft_mag(a, 64, 16) ** 2 + losses.MAG_FLOOR**2) for a in (x, y))
    ref_sc = np.mean(np.linalg.norm((s - s_hat).reshape(2, -1), axis=1)
                     / np.linalg.norm(s.reshape(2, -1), axis=1))
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-4)
    np.testing.assert_allclose(logm, np.abs(np.log(s) - np.log(s_hat)).mean(), rtol=1e-4)
    multi = losses.multi_resolution_stft_loss(x, y, (64, 128), (16, 32))
    sc2, logm2 = losses.stft_loss(x, y, 128, 32)
    np.testing.assert_allclose(multi, (sc + logm + sc2 + logm2) / 2, rtol=1e-5)
    assert float(losses.multi_resolution_stft_loss(x, x, (64,), (16,))) < 1e-6
    with pytest.raises(ValueError, match="shorter"):
        losses.stft_magnitude(x, 1024, 16)


def test_stft_loss_gradient_is_finite_on_silence():
    x = np.zeros((1, 512), np.float32)
    g = jax.grad(lambda y: losses.multi_resolution_stft_loss(x, y, (64,), (16,)))(jnp.zeros_like(x))
    assert np.isfinite(np.asarray(g)).all()


def test_hinge_losses_match_numpy():
    real, fake = _rand(7, (4, 5)), _rand(8, (4, 5))
    ref_d = np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()
    np.testing.assert_allclose(hinge_d_loss(real, fake), ref_d, rtol=1e-6)
    np.testing.assert_allclose(hinge_g_loss(fake), -fake.mean(), rtol=1e-6)


@pytest.mark.parametrize("ndim,shape", [
    pytest.param(2, (2, 16, 16, 3), marks=pytest.mark.slow), (1, (2, 256, 1))])
def test_adversarial_terms_route_gradients(ndim, shape):
    """Generator term: no gradient into D; D term: no gradient into the fake input; all off
    before the start step."""
    disc = PatchDiscriminator(shape[-1], 8, 2, ndim=ndim, kernel=4, stride=2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(disc, nnx.Param)
    real, fake = _rand(9, shape), _rand(10, shape)

    def total(p, fake, step):
        return adversarial_terms(nnx.merge(graphdef, p), real, fake, step, 0.5, 10)

    (value, metrics), (g_params, g_fake) = jax.value_and_grad(total, argnums=(0, 1),
                                                              has_aux=True)(params, fake, 10)
    assert np.isfinite(float(value)) and float(metrics["adv_on"]) == 1.0
    np.testing.assert_allclose(value, 0.5 * metrics["adv_g"] + metrics["adv_d"], rtol=1e-6)

    d_only = jax.grad(lambda p: hinge_d_loss(nnx.merge(graphdef, p)(real),
                                             nnx.merge(graphdef, p)(fake)))(params)
    for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(d_only), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    g_only = jax.grad(lambda f: 0.5 * hinge_g_loss(disc(f)))(fake)
    np.testing.assert_allclose(g_fake, g_only, rtol=1e-5, atol=1e-7)

    (value, metrics), (g_params, g_fake) = jax.value_and_grad(total, argnums=(0, 1),
                                                              has_aux=True)(params, fake, 9)
    assert float(value) == 0.0 and float(metrics["adv_on"]) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves((g_params, g_fake)))
