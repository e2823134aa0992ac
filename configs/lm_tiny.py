"""A tiny text-only LM on the built-in captions: trains in about a minute on a 2-core CPU.

latentlm train --config configs/lm_tiny.py --workdir runs/lm_tiny
"""

from latentlm_jax.config.base import base_config


def get_config():
    c = base_config()
    c.name = "lm_tiny"
    c.task = "lm"
    c.model.num_layers = 2
    c.model.emb_dim = 128
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.model.mlp_dim = 384
    c.data.source = "shapes_tones_captions"
    c.data.seq_len = 128
    c.train.global_batch_size = 16
    c.train.num_steps = 200
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 30
    c.train.log_every = 20
    c.checkpoint.every_steps = 100
    return c
