"""The image σ-VAE of the demo: 32×32 RGB → 4×4 grid of 8-dim latents (×8), a few CPU minutes.

latentlm train --config configs/vae_image_tiny.py --workdir runs/vae_image_tiny
Figures and the reasons for these settings: docs/vae.md.
"""

from latentlm_jax.config.base import base_config


def get_config():
    c = base_config()
    c.name = "vae_image_tiny"
    c.task = "vae_image"
    v = c.vae
    v.kind = "sigma"
    # β weighs mean(μ²) against a per-pixel mean reconstruction loss. At the reference's 1e-2, μ
    # stays near the noise scale (std(μ) ≈ 1 vs E|σ| = 0.75) and the decoder blurs: 33 dB, small
    # circles scored as squares (91%). At 1e-3: std(μ) ≈ 2, 36.8 dB, 100% (docs/vae.md).
    v.beta = 1e-3
    v.image.downsample = 8
    v.image.patch_size = 2
    v.image.latent_dim = 8
    v.image.channels = 32
    v.image.channel_mult = (1, 2, 4)
    v.image.num_res_blocks = (1,)
    v.loss.recon = "l1_l2"  # L2 alone blurs edges; L1 alone starts by painting everything white
    c.train.global_batch_size = 32
    c.train.num_steps = 2000
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.min_lr_ratio = 0.05
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.checkpoint.every_steps = 1000
    return c
