"""``latentlm demo --fast``: the demo's full path with tiny settings (about two minutes on a CPU).

Every stage runs as in the full demo (``configs/demo.py``, loaded from next to this file); only
sizes, steps and sample counts shrink, so the scores are far below the full demo's.
"""

import os

from latentlm_jax.config.loading import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
    c.fast = True
    for name, steps, batch in (("vae_image", 60, 16), ("vae_audio", 40, 8), ("lm", 60, 8)):
        t = c[name].train
        t.num_steps = steps
        t.global_batch_size = batch
        t.warmup_steps = 10
        t.log_every = 20
        t.eval_every = 0
        c[name].checkpoint.every_steps = steps
    c.lm.model.num_layers = 2
    c.lm.model.emb_dim = 64
    c.lm.model.head_dim = 16
    c.lm.model.mlp_dim = 192
    c.lm.train.ema_decay = 0.0  # an EMA over 60 steps would still be mostly the initial weights
    c.encode.num_examples = 256
    g = c.generate
    g.text_to_image = 10  # includes one held-out combination (every 10th prompt is one)
    g.image_to_text = 6
    g.text_to_audio = 6
    g.audio_to_text = 6
    g.batch_size = 10
    g.steps = 5
    g.max_text_tokens = 48
    c.report.max_audio_players = 12
    return c
