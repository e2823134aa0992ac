"""σ-VAE config fields, attached to the base config as ``config.vae``.

The defaults are the settings documented in docs/vae.md; the latent shapes they imply are computed
in :mod:`latentlm_jax.vae.config`.
"""

from __future__ import annotations

import ml_collections as mlc


def vae_defaults() -> mlc.ConfigDict:
    v = mlc.ConfigDict()
    v.kind = "sigma"  # sigma (mean-only encoder, fixed-scale noise) | plain (learned variance + KL)
    v.std = 0.75  # σ-VAE: σ = n·std/0.8, n ~ N(0, 1), one σ per example, so E|σ| ≈ std
    v.beta = 1e-2  # σ-VAE: weight of mean(μ²)
    v.kl_weight = 1e-4  # plain VAE: weight of the KL (mean over latent elements)
    v.dtype = "float32"  # compute dtype of the convolutions: float32 | bfloat16
    v.eval_examples = 64  # test-split examples reconstructed at each eval

    im = v.image = mlc.ConfigDict()
    im.resolution = 32
    im.in_channels = 3
    im.downsample = 8  # 4 | 8 | 16 (any power of two that divides the resolution)
    im.patch_size = 2  # space-to-depth before the stem, depth-to-space after the output conv:
    #                    the first/last ×2 of the downsampling, with no full-resolution conv
    im.latent_dim = 8
    im.channels = 32  # base width; level i uses channels · channel_mult[i]
    im.channel_mult = (1, 2, 4)  # one per level (log2(downsample / patch_size) + 1); the last
    #                              value repeats when the tuple is shorter
    im.num_res_blocks = (1,)  # residual blocks per level (encoder and decoder), last repeats
    im.squash_output = True  # tanh on the decoder output: flat white background and sharp edges
    #                          come cheap (inputs are in [-1, 1])

    au = v.audio = mlc.ConfigDict()
    au.sample_rate = 16000
    au.num_samples = 16000
    au.representation = "stft"  # stft (log|STFT| in; log-magnitude + phase + iSTFT out) | waveform
    au.stft_hop = 320  # stft: STFT hop (n_fft = 4·hop, 12.5 Hz bins) = the conv stacks' full rate
    au.patch_size = 8  # waveform: samples folded into channels before the stem, unfolded after
    au.strides = (2,)  # strided convs after the front end: hop = 320 · 2 = 640 → 25 frames/s
    au.latent_dim = 16
    au.channels = 64  # base width; level i (after i strides) uses channels · channel_mult[i]
    au.channel_mult = (1, 2)  # one per level (len(strides) + 1), last repeats
    au.num_res_blocks = (1,)  # per level, last repeats
    au.kernel_size = 7  # of the stem, output and residual-block convolutions

    lo = v.loss = mlc.ConfigDict()
    lo.recon = "l2"  # l1 | l2 | l1_l2 (sum of both)
    lo.recon_weight = 1.0  # audio configs use 0: the phase-blind STFT loss alone (docs/vae.md)
    lo.stft_weight = 1.0  # audio only: multi-resolution STFT loss
    lo.stft_fft_sizes = (128, 512, 2048)
    lo.stft_hops = (32, 128, 512)
    lo.stft_floor = 1e-2  # |X| → sqrt(|X|² + floor²) before the log, so the (exactly silent)
    #                       gaps between notes do not dominate the log-magnitude term
    lo.adversarial = False  # patch discriminator with hinge loss (see docs/vae.md)
    lo.adv_weight = 0.1
    lo.adv_start_step = 2000
    lo.disc_channels = 32
    lo.disc_layers = 3
    return v
