"""The audio σ-VAE of the demo: 1 s of 16 kHz audio → 25 frames of 16-dim latents (hop 640).

latentlm train --config configs/vae_audio_tiny.py --workdir runs/vae_audio_tiny
Encoder over log-magnitude STFT frames (hop 320), decoder to log-magnitude + phase frames and an
inverse STFT; trained on the multi-resolution STFT loss alone. Figures and the reasons for these
settings: docs/vae.md.
"""

from latentlm_jax.config.base import base_config


def get_config():
    c = base_config()
    c.name = "vae_audio_tiny"
    c.task = "vae_audio"
    v = c.vae
    v.kind = "sigma"
    v.beta = 1e-2
    v.audio.representation = "stft"
    v.audio.stft_hop = 320
    v.audio.strides = (2,)
    v.audio.latent_dim = 16
    v.audio.channels = 64
    v.audio.channel_mult = (1, 2)
    v.audio.num_res_blocks = (1,)
    v.loss.recon = "l2"
    v.loss.recon_weight = 0.0  # phase is free: the waveform L2 only pulls amplitudes to zero
    v.loss.stft_weight = 1.0
    v.eval_examples = 256
    c.train.global_batch_size = 16
    c.train.num_steps = 1500
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.min_lr_ratio = 0.05
    c.train.log_every = 100
    c.train.eval_every = 1500
    c.checkpoint.every_steps = 500
    return c
