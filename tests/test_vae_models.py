"""Image and audio VAE models: shapes, σ-VAE noise statistics, determinism, parameter names."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.vae.audio import AudioVAE, audio_forward_flops, polar_spectrum
from latentlm_jax.vae.codec import sample_sigma
from latentlm_jax.vae.config import audio_latent_shape, hop_length, image_latent_shape
from latentlm_jax.vae.image import ImageVAE, image_forward_flops
from latentlm_jax.vae.stft import frame_phase, istft, stft
from tests.helpers import tiny_vae


@nnx.jit
def encode_decode(model, x, key):
    """(μ, decode(sampled z)) under one jit: eager conv ops would compile one by one."""
    mu = model.encode(x)
    return mu, model.decode(model.sample_latent(mu, key))


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_image_shapes_for_downsample_factors(factor):
    v = tiny_vae(**{"image.downsample": factor, "image.latent_dim": 6})
    model = ImageVAE(v, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    mu, y = encode_decode(model, x, jax.random.key(0))
    assert mu.shape == (2, *image_latent_shape(v)) == (2, 32 // factor, 32 // factor, 6)
    assert mu.dtype == jnp.float32
    assert y.shape == x.shape and y.dtype == jnp.float32


@pytest.mark.parametrize("rep,base,strides,frames", [
    ("stft", 320, (2,), 25), ("stft", 200, (2, 4), 10), ("waveform", 8, (4, 4, 5), 25)])
def test_audio_shapes_for_hops(rep, base, strides, frames):
    key = "audio.stft_hop" if rep == "stft" else "audio.patch_size"
    v = tiny_vae(**{"audio.representation": rep, key: base, "audio.strides": strides,
                    "audio.latent_dim": 5})
    assert hop_length(v) == base * math.prod(strides) == 16000 // frames
    model = AudioVAE(v, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16000)) * 0.1, jnp.float32)
    mu, y = encode_decode(model, x, jax.random.key(0))
    assert mu.shape == (2, *audio_latent_shape(v)) == (2, frames, 5)
    assert y.shape == (2, 16000) and y.dtype == jnp.float32


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="downsample"):
        ImageVAE(tiny_vae(**{"image.downsample": 6}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="patch_size"):
        ImageVAE(tiny_vae(**{"image.patch_size": 16, "image.downsample": 8}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hop"):
        audio_latent_shape(tiny_vae(**{"audio.strides": (7, 7)}))
    with pytest.raises(ValueError, match="kind"):
        ImageVAE(tiny_vae(kind="vq"), rngs=nnx.Rngs(0))


def test_expected_abs_sigma_is_std():
    """σ = n·std/0.8: E|σ| = std·√(2/π)/0.8 ≈ 0.9974·std. With 400k draws the standard error of
    the mean of |σ| is ≈ 0.1% of std, so a 1% tolerance is ≈ 10 standard errors."""
    std = 0.75
    sigma = np.asarray(sample_sigma(jax.random.key(0), 400_000, std))
    assert abs(np.abs(sigma).mean() - std) < 0.01 * std
    assert abs(np.abs(sigma).mean() - std * math.sqrt(2 / math.pi) / 0.8) < 0.003 * std
    assert abs(sigma.mean()) < 0.01 * std  # symmetric: the sign carries no information


def test_sample_latent_uses_one_sigma_per_example():
    model = ImageVAE(tiny_vae(**{"image.latent_dim": 16, "image.downsample": 4}),
                     rngs=nnx.Rngs(0))
    mu = jnp.asarray(np.random.default_rng(1).standard_normal((64, 8, 8, 16)), jnp.float32)
    z, sigma = model.sample_latent(mu, jax.random.key(3), return_sigma=True)
    assert sigma.shape == (64,)
    noise = np.asarray(z - mu).reshape(64, -1)  # 1024 elements per example
    # Per example, the noise is σ_b·ε: its empirical std is |σ_b| (1024 draws: ±~2.2%) ...
    np.testing.assert_allclose(noise.std(axis=1), np.abs(np.asarray(sigma)), rtol=0.1)
    # ... and, divided by σ_b, it is unit-variance white noise in every example.
    np.testing.assert_allclose((noise / np.asarray(sigma)[:, None]).std(axis=1), 1.0, atol=0.1)
    # The scale really varies between examples (per-element σ would make these all ≈ equal).
    assert np.abs(np.asarray(sigma)).std() > 0.3


def test_mode_is_deterministic_and_is_the_mean():
    model = ImageVAE(tiny_vae(), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    mode = nnx.jit(lambda m, x: m.mode(x))
    a, b = mode(model, x), mode(model, x)
    np.testing.assert_array_equal(a, b)
    post = nnx.jit(lambda m, x: m.posterior(x))(model, x)
    np.testing.assert_array_equal(a, post.mean)
    assert post.logvar is None
    z1 = model.sample_latent(a, jax.random.key(0))
    z2 = model.sample_latent(a, jax.random.key(1))
    assert not np.allclose(z1, z2)
    np.testing.assert_array_equal(z1, model.sample_latent(a, jax.random.key(0)))


def test_plain_vae_reparameterises():
    model = AudioVAE(tiny_vae(kind="plain"), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 16000)) * 0.1, jnp.float32)
    post = nnx.jit(lambda m, x: m.posterior(x))(model, x)
    assert post.logvar is not None and post.logvar.shape == post.mean.shape == (2, 25, 16)
    with pytest.raises(ValueError, match="logvar"):
        model.sample_latent(post.mean, jax.random.key(0))
    mu = jnp.zeros((8, 25, 16))
    z = model.sample_latent(mu, jax.random.key(0), jnp.full(mu.shape, math.log(4.0)))
    assert abs(float(jnp.std(z)) - 2.0) < 0.1  # exp(log(4)/2) = 2, 3200 draws


@pytest.mark.parametrize("cls", [ImageVAE, AudioVAE])
def test_every_param_has_logical_names(cls):
    model = cls(tiny_vae(**{"loss.adversarial": True}), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    specs = jax.tree.leaves(nnx.get_partition_spec(params),
                            is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    leaves = jax.tree.leaves(params)
    assert len(specs) == len(leaves) > 0
    ndim = 2 if cls is ImageVAE else 1
    kernel_names = ("kernel",) * ndim + ("conv_in", "conv_out")
    for spec, leaf in zip(specs, leaves, strict=True):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec)
        if leaf.ndim > 1:
            assert tuple(spec) == kernel_names
    assert model.disc is not None


def test_stft_matches_numpy_and_inverts():
    hop, n = 80, 320
    x = np.random.default_rng(4).standard_normal((2, 1600)).astype(np.float32)
    spec = np.asarray(stft(x, hop))
    padded = np.pad(x.astype(np.float64), ((0, 0), (n // 2, n // 2)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    ref = np.fft.rfft(np.stack([padded[:, f * hop:f * hop + n] * window for f in range(20)], 1))
    assert spec.shape == (2, 20, n // 2 + 1)
    np.testing.assert_allclose(spec, ref, atol=2e-3)
    np.testing.assert_allclose(istft(jnp.asarray(spec), hop, 1600), x, atol=1e-5)


def test_absolute_phase_makes_a_steady_tone_constant():
    """A tone at bin k turns by 2π·k·hop/n_fft per frame in frame-local phase; referenced to
    absolute time its phase is constant, and istft(absolute_phase=True) undoes the rotation."""
    hop, k = 80, 13
    x = np.cos(2 * np.pi * k * np.arange(3200) / (4 * hop)).astype(np.float32)[None]
    local = np.asarray(stft(x, hop))[0, 3:-3, k]
    assert np.ptp(np.angle(local)) > 1.0
    absolute = np.asarray(stft(x, hop)) * np.conj(np.asarray(frame_phase(40, hop)))
    steady = absolute[0, 3:-3, k]
    np.testing.assert_allclose(steady / steady[0], 1.0, atol=1e-3)
    np.testing.assert_allclose(istft(jnp.asarray(absolute), hop, 3200, absolute_phase=True), x,
                               atol=1e-5)
    y = np.array([[np.log(2.0), 0.0, np.pi / 2, 0.0]], np.float32)  # 2 bins: log|X|, phase
    np.testing.assert_allclose(polar_spectrum(jnp.asarray(y)), [[2j, 1.0]], atol=1e-6)


@pytest.mark.parametrize("cls,flops,shape", [
    pytest.param(ImageVAE, image_forward_flops, (1, 32, 32, 3), marks=pytest.mark.slow),
    (AudioVAE, audio_forward_flops, (1, 50, 641)),
])
def test_analytic_flops_match_xla(cls, flops, shape):
    """The analytic count covers the convolutions of encoder + decoder (``shape``: the encoder's
    input features; audio: 50 STFT frames of 641 bins); XLA's also counts norms and
    activations, a few percent at this width. The STFTs are left out of both."""
    v = tiny_vae(**{"image.channels": 32, "audio.channels": 32})
    model = cls(v, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def fwd(state, x):
        m = nnx.merge(graphdef, state)
        return m.decoder(m.encoder(x))

    cost = jax.jit(fwd).lower(state, jnp.zeros(shape)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    assert flops(v) == pytest.approx(cost["flops"], rel=0.05)
