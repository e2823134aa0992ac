"""``latentlm demo``: the full demo's settings (about 20 minutes on a CPU).

One ConfigDict holding the three training configs (``vae_image``, ``vae_audio``, ``lm``: loaded
from their files next to this one) and the encode / generate / report settings, so
``--config.lm.train.num_steps=300`` or ``--config.generate.steps=30`` override anything.
``latentlm_jax/demo/pipeline.py`` runs it (and ``check_demo_config`` there validates it);
``configs/demo_fast.py`` builds on it.
"""

import os

import ml_collections as mlc

from latentlm_jax.config.loading import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    c = mlc.ConfigDict()
    c.seed = 0  # passed to every stage: training, the encode noise, the test split, the samplers
    c.fast = False  # shown in the report: a short schedule, lower scores expected
    c.vae_image = load_config_file(os.path.join(HERE, "vae_image_tiny.py"))
    c.vae_audio = load_config_file(os.path.join(HERE, "vae_audio_tiny.py"))
    c.lm = load_config_file(os.path.join(HERE, "latentlm_tiny.py"))

    e = c.encode = mlc.ConfigDict()
    e.num_examples = 20_000  # train examples encoded per modality
    e.batch_size = 256

    g = c.generate = mlc.ConfigDict()
    g.text_to_image = 180  # prompts; 180 = every combination once, the 18 held-out ones included
    g.image_to_text = 100  # test-split examples
    g.text_to_audio = 100
    g.audio_to_text = 100
    g.batch_size = 100  # prompts per generator call
    g.sampler = "dpm++2m"  # ddpm | ddim | dpm++2m
    g.steps = 20
    g.cfg_scale_image = 3.0
    g.cfg_scale_audio = 3.0
    g.temperature = 1.0  # latent noise scale
    g.text_temperature = 0.0  # 0 = greedy captions
    g.max_text_tokens = 64
    g.use_ema = True
    # image→text / audio→text prompts: the σ-VAE's μ (mean) or one noisy sample z = μ + σ·ε as in
    # training (sample; seeded); docs/vae.md "Fresh noise"
    g.understanding_input = "mean"

    r = c.report = mlc.ConfigDict()
    r.max_audio_players = 48
    return c
