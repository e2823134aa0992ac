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
    # prompts; 540 = every combination three times, so the 18 held-out combinations are scored on
    # 54 samples (at 18, one sample moved that score by 5.6 points)
    g.text_to_image = 540
    g.image_to_text = 100  # test-split examples
    g.text_to_audio = 300  # 100 moved the score by 1 point a sample; 300 cost ~8 s more
    g.audio_to_text = 100
    g.batch_size = 100  # prompts per generator call
    g.sampler = "dpm++2m"  # ddpm | ddim | dpm++2m
    g.steps = 20
    # Measured on two demo LMs (seeds 0, 1), 540 text→image samples per setting (docs/fidelity.md
    # "Sampling settings"): CFG 3 / temperature 1 scored 87.2 / 85.2%, CFG 2 / temperature 0.6
    # 94.4 / 93.5%; CFG ≥ 4.5 is far worse (69.6% at seed 1).
    g.cfg_scale_image = 2.0
    g.cfg_scale_audio = 3.0
    g.temperature = 0.6  # latent noise scale: the initial and injected noise × this
    g.text_temperature = 0.0  # 0 = greedy captions
    g.max_text_tokens = 64
    # The raw weights: the demo's EMA (decay 0.995, ~200 steps) trails a model still learning
    # image→text at its last steps: 80% with the EMA against 93% raw on one seed-0 run
    # (docs/fidelity.md "Sampling settings")
    g.use_ema = False
    # image→text / audio→text prompts: the σ-VAE's μ (mean) or one noisy sample z = μ + σ·ε as in
    # training (sample; seeded); docs/vae.md "Fresh noise"
    g.understanding_input = "mean"

    r = c.report = mlc.ConfigDict()
    r.max_audio_players = 48
    return c
