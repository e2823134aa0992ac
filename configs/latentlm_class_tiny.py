"""A tiny class-conditional LatentLM on the built-in data: image latents only, 180 classes.

The layout of the authors' ImageNet code (docs/class_conditional.md): each document is
``[<class k>] z₁ … z₁₆`` (the class of shape × colour × size × position, data/shapes_tones.py
``class_id``; the null class at rate ``data.cond_drop``), and ``latentlm generate --class-id K``
samples with classifier-free guidance. It trains from the latents of the demo's image σ-VAE,
encoded with their labels (``latentlm encode`` carries the built-in data's ``label``):

    latentlm encode --vae-workdir runs/demo/vae_image --out runs/class/latents
    latentlm train --config configs/latentlm_class_tiny.py:runs/class/latents \
        --workdir runs/class/lm
    latentlm generate --workdir runs/class/lm --class-id 0,1,2 --num-samples 4 --out samples/

The argument is the latents folder (default ``runs/class/latents``).
"""

from latentlm_jax.config.base import base_config

NUM_CLASSES = 180  # len(shapes_tones.all_combinations()); configs/ import only the config package


def get_config(latents_dir: str = "runs/class/latents"):
    c = base_config()
    c.name = "latentlm_class_tiny"
    c.task = "lm"

    m = c.model
    m.num_layers = 4
    m.emb_dim = 128
    m.num_heads = 4
    m.num_kv_heads = 2
    m.head_dim = 32
    m.mlp_dim = 384
    m.num_classes = NUM_CLASSES
    m.image_latent_dim = 0  # from latents.json
    m.audio_latent_dim = 0
    m.head.depth = 3
    m.head.mlp_ratio = 2.0
    m.diffusion.schedule = "cosine"
    m.diffusion.prediction = "v"  # as configs/latentlm_tiny.py (docs/diffusion.md)
    m.diffusion.batch_mul = 2
    m.diffusion.loss_weight = 1.0

    d = c.data
    d.source = "latents"
    d.latents_dir = latents_dir
    d.label = "label"
    d.cond_drop = 0.1  # the authors' class_dropout_prob
    d.seq_len = 136  # 8 documents of 1 + 16 positions per row, no padding

    t = c.train
    t.global_batch_size = 16
    t.num_steps = 1500
    t.learning_rate = 2e-3
    t.warmup_steps = 100
    t.min_lr_ratio = 0.05
    t.weight_decay = 0.01
    t.log_every = 50
    t.ema_decay = 0.995  # 0.995^1500 ≈ 5e-4 of the initial weights left
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 2
    return c
