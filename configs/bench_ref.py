"""The authors' small LatentLM (issue #14's reference), for ``latentlm bench train``.

8 layers × 512, 8 heads of 64 (no GQA), SwiGLU FFN 1344; one diffusion head of depth 3, width
512, FFN 1344, on 16-dim image latents, K = 4 noise draws, ε-prediction, cosine schedule; rows of
256 positions (a class token, then 255 latents, every position predicting the next latent),
batch 8; AdamW 1e-4 (0.9, 0.98, wd 0.01) at a constant rate, clip 1.0. The data is the synthetic
batch (``data.source="synthetic"``, latentlm_jax/data/synthetic.py): the same program the peer
harness (../shared/peer/bench_jax.py) times. docs/benchmarks.md has the figures.

    latentlm bench train --config configs/bench_ref.py [--steps 5 --warmup 2]
    latentlm bench train --config configs/bench_ref.py --config.model.dtype=bfloat16
"""

from latentlm_jax.config.base import base_config


def get_config():
    c = base_config()
    c.name = "bench_ref"
    c.task = "lm"

    m = c.model
    m.num_layers = 8
    m.emb_dim = 512
    m.num_heads = 8
    m.num_kv_heads = 8
    m.head_dim = 64
    m.mlp_dim = 1344
    m.image_latent_dim = 16
    m.audio_latent_dim = 0
    m.head.depth = 3
    m.head.width = 512
    m.head.mlp_ratio = 1344 / 512
    m.diffusion.batch_mul = 4
    m.diffusion.prediction = "eps"
    m.diffusion.schedule = "cosine"
    m.diffusion.target_fraction = 0.0  # the head runs on every position, as the authors' does
    # Unrolled layers, as the authors' code: on this size XLA:CPU runs them 1.6% faster than a
    # layer scan (no per-layer residual stacking); compile takes longer. docs/benchmarks.md.
    m.scan_layers = False
    # The fused attention kernel for XLA:CPU (docs/attention.md): on this config −8 to −10% per
    # float32 step against the "xla" attention (docs/benchmarks.md, profile finding 22). A CPU
    # benchmark: on an accelerator pass --config.model.attention=dot_product (or splash).
    m.attention = "cpu_flash"

    c.data.source = "synthetic"
    c.data.seq_len = 256
    c.train.global_batch_size = 8
    c.train.learning_rate = 1e-4
    c.train.warmup_steps = 0
    c.train.min_lr_ratio = 1.0  # a constant rate, as the authors' AdamW
    c.train.b1, c.train.b2, c.train.eps = 0.9, 0.98, 1e-8
    c.train.weight_decay = 0.01
    c.train.grad_clip = 1.0
    return c
