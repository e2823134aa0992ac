"""Class-conditional ImageNet 256×256 as the authors trained it: ``latentlm_imagenet.py:<size>``.

    latentlm train --config configs/latentlm_imagenet.py:l:runs/in256/latents --workdir W
    latentlm describe --config configs/latentlm_imagenet.py:b

Sizes are the authors' ``Transformer_B`` / ``_L`` / ``_H`` (LatentLM ``models/Transformer.py``):

====  ======  =====  =====  ==========  ============================
size  layers  width  heads  head depth  SwiGLU width (backbone, head)
====  ======  =====  =====  ==========  ============================
b     24      768    12     6           2048
l     32      1024   16     8           2688
h     40      1280   20     12          3392
====  ======  =====  =====  ==========  ============================

with their rules: ``mlp_ratio`` 4 under SwiGLU's 2/3, rounded down to a multiple of 64, for the
backbone and the diffusion head alike; heads 64 wide, as many key/value heads as heads; a head as
wide as the model. Latents: the 16×16 grid of 16-dim σ-VAE latents of a 256×256 image
(``configs/vae_imagenet.py``, patch size 1), 256 per image, raster order. Each document is
``[<class k>] z₁ … z₂₅₆`` (1000 classes, the null class at rate 0.1: their
``class_dropout_prob``), one per 257-position row as their batches are; ε-prediction, cosine
schedule, 4 (t, ε) draws per latent (``ddpm_batch_mul``), AdamW lr 1e-4, betas (0.9, 0.98), weight
decay 0.01, clip 1.0, 100 warm-up steps, EMA 0.9999. docs/class_conditional.md has the whole path
(prepare ``imagenet2012`` with TFDS, σ-VAE, encode, train, generate by class, FID).

The second argument is the folder ``latentlm encode`` wrote (``data.latents_dir``; or pass
``--config.data.latents_dir=DIR``). Norms without gains, RoPE frequencies, initialisation and
the scalar latent normalisation are the authors' (``model.norm_scale`` / ``rope_frequencies`` /
``init``, ``data.latent_normalisation``). Parameters differ from the authors' counts by adaLN
biases (ours), the latent embedders' biases (theirs) and a 264-id text embedding + LM head that
class-conditional documents never use (tests/test_class_conditional.py computes both counts:
B 212.58M vs their 212.16M, L 495.78M vs 495.22M, H 1007.4M vs 1006.7M).
"""

from latentlm_jax.config.base import base_config

# size: (layers, width, heads, diffusion-head depth) — the authors' Transformer_B / _L / _H.
SIZES = {"b": (24, 768, 12, 6), "l": (32, 1024, 16, 8), "h": (40, 1280, 20, 12)}
NUM_CLASSES = 1000
LATENT_DIM = 16
LATENTS_PER_IMAGE = 256  # 16 × 16


def swiglu_width(width: int, mlp_ratio: float = 4.0) -> int:
    """The authors' SwiGLU hidden width: int(width · mlp_ratio · 2/3 / 64) · 64."""
    return int(width * mlp_ratio * 2 / 3 / 64) * 64


def get_config(arg: str = "l"):
    size, _, latents_dir = arg.partition(":")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    layers, width, heads, head_depth = SIZES[size]
    c = base_config()
    c.name = f"latentlm_imagenet_{size}"
    c.task = "lm"

    m = c.model
    m.num_layers = layers
    m.emb_dim = width
    m.num_heads = m.num_kv_heads = heads
    m.head_dim = width // heads
    m.mlp_dim = swiglu_width(width)
    m.num_classes = NUM_CLASSES
    m.image_latent_dim = LATENT_DIM
    m.audio_latent_dim = 0
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat_policy = "save_dots"
    m.attention = "dot_product"  # cuDNN flash on GPU; XLA elsewhere
    m.head.depth = head_depth
    m.head.width = 0  # = emb_dim
    m.head.mlp_ratio = swiglu_width(width) / width  # round(width · ratio) = the same width
    m.diffusion.schedule = "cosine"
    m.diffusion.prediction = "eps"
    m.diffusion.batch_mul = 4
    m.diffusion.target_fraction = 0.0  # 256 of a row's 257 positions are targets: all of them
    # The authors' choices where ours differ (docs/fidelity.md rows 6, 13, 15, 18; the demo's
    # measurement of them: docs/fidelity.md "Measured on the demo"): RMSNorms without a gain,
    # RoPE frequencies θ^(−j/(D/2−1)), PyTorch's default Linear init, one scalar latent scale.
    m.norm_scale = False
    m.rope_frequencies = "authors"
    m.init = "torch_default"

    d = c.data
    d.source = "latents"
    d.latents_dir = latents_dir  # "": name it with --config.data.latents_dir=DIR
    d.label = "label"
    d.cond_drop = 0.1
    d.latent_normalisation = "scalar"
    d.seq_len = 1 + LATENTS_PER_IMAGE
    d.num_workers = 8

    t = c.train
    t.global_batch_size = 256
    t.num_steps = 400_000
    t.learning_rate = 1e-4
    t.min_lr_ratio = 0.0
    t.warmup_steps = 100
    t.b1, t.b2 = 0.9, 0.98
    t.weight_decay = 0.01
    t.grad_clip = 1.0
    t.ema_decay = 0.9999
    t.log_every = 100
    c.checkpoint.every_steps = 5000
    c.mesh.ici.data, c.mesh.ici.fsdp = 1, -1
    return c
