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
    v.image.downsample = 8
    v.image.patch_size = 2
    v.image.latent_dim = 8
    v.image.channels = 32
    v.image.channel_mult = (1, 2, 4)
    v.image.num_res_blocks = (1,)
    v.loss.recon = "l2"
    c.train.global_batch_size = 32
    c.train.num_steps = 2000
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.min_lr_ratio = 0.05
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.checkpoint.every_steps = 1000
    return c
