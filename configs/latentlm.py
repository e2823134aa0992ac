"""The LatentLM scaling family, one size per argument: ``configs/latentlm.py:<size>``.

    latentlm train --config configs/latentlm.py:7b --workdir gs://BUCKET/runs/latentlm_7b \
        --config.data.latents_dir=/gcs/BUCKET/latents   # `latentlm encode` output, gcsfuse-mounted
    latentlm bench memory --config configs/latentlm.py:7b  # compile for its topology: fits?
    latentlm bench memory --config configs/latentlm.py --all   # the whole family, one table
    latentlm describe --config configs/latentlm.py:t2       # parameters and training FLOPs

A size is a depth and a width; everything else follows from rules (``latentlm_jax/config/
families.py``): attention heads 64 wide up to width 1024 and 128 above, a SwiGLU FFN 4·E wide
(the authors' ``mlp_ratio=6`` under SwiGLU's 2/3), per modality a diffusion head of 3 blocks as
wide as the model with a 4·E SwiGLU (our ``head.mlp_ratio`` = 4.0), and on TPU the chips,
topology and global batch from the decoder's parameter count.

Pod sizes (``SIZES``, the family ``bench memory --all`` proves) are the authors' scaling family
(``Transformer_Base`` … ``Transformer_13B`` in their LatentLM code) plus one ~30B step beyond it
(48 × 6144: 29.0B in the decoder blocks). A block is 16·E² parameters, more than the 12·E² of a
LLaMA block, so the names undersell the decoder (their "7B" has 8.6B in its blocks), and each
modality's head adds ~49·E²: ``latentlm describe`` prints the exact counts. Every pod size: image
+ audio latents (dims of the σ-VAE defaults in ``config/vae.py``), K = 4 diffusion draws per
latent, the head run on gathered latent targets (half of each row's slots), 4096-token rows of
interleaved documents, a 32k SentencePiece vocabulary, bf16 compute with f32 parameters, AdamW
state and EMA, layers scanned, full remat, splash attention. Each names the TPU v5p topology it is
sized for (``target_topology``, ``target_slices``), which ``latentlm bench memory`` compiles for:
the smallest power-of-two chip count (≥ 4, one host) with ≤ 80M decoder parameters per chip,
slices of ≤ 256 chips (v5p:4x8x8), 8 rows per chip but ≤ 256 rows (1M tokens) per slice — so rows
per chip are 8 up to ``xl``, then 4, 2, 1, 1 (at 8, ``3b`` needs 103 GiB; docs/benchmarks.md
"LatentLM memory proofs"). More tokens per step = more chips (slices), not more rows per chip.

CPU sizes (``CPU_SIZES``: ``t1`` … ``t4``, for scaling sweeps on one machine) take the same model
rules on the CPU settings of ``configs/latentlm_tiny.py``: its data (the σ-VAE latents of the
built-in shapes & tones data that ``make demo`` leaves in ``runs/demo``; pass another ``latentlm
encode`` folder as ``latentlm.py:t2:DIR``), 128-token rows of 32, byte tokenizer, its optimizer,
its diffusion settings (K = 2 draws, target fraction 0.4: the heads are most of a tiny model's
FLOPs), float32, the reference ``xla`` attention, no scan or remat, no topology.

Any other ``d<depth>w<width>`` (e.g. ``d4w128``, ``d36w3072``) is derived the same way: on the
CPU settings below width 768 (the authors' smallest), on the pod settings from 768 up; append
``-cpu`` or ``-pod`` to choose (``d2w1024-cpu``). Only the named pod sizes are proven to fit.

Parallelism: FSDP over every chip of a slice, data parallelism across slices (``mesh.dcn.data``),
and tensor parallelism (``mesh.ici.tensor``; heads, SwiGLU widths and the vocabulary divide by 8
in every pod size) only where a compile showed it pays (``TENSOR``): for ``13b`` tensor=4 needs
63.67 GiB per chip against 92.98 with FSDP alone; for ``30b`` it needs 107.81, which does not fit,
against 91.66 (docs/benchmarks.md "Tensor parallelism, measured").

The head runs on ``target_fraction`` = half of each row's positions per modality (2,048 slots); the
packer closes a row before its latent targets of a modality would pass them, so none is dropped
(``data/target_capacity.py``; ``*_latents_dropped`` in the metrics reads 0). Data whose rows are
mostly one modality then packs rows shorter: raise the fraction for it.
"""

import os

from latentlm_jax.config.base import base_config
from latentlm_jax.config.families import apply_shape, parse_spec, tpu_sizing
from latentlm_jax.config.loading import load_config_file

# size: (depth, width). Topologies are TPU v5p (95 GiB HBM per chip): "v5p:AxBxC" is A·B·C
# chips, e.g. v5p:4x4x4 = 64 chips = a v5p-128.
SIZES = {
    "base": (12, 768),     # v5p:2x2x1, 4 chips, 32 rows: 128k tokens per step
    "medium": (24, 1024),  # v5p:2x2x2, 8 chips, 256k tokens
    "large": (24, 1536),   # v5p:2x2x4, 16 chips, 512k tokens
    "xl": (24, 2048),      # v5p:2x4x4, 32 chips, 1M tokens
    "3b": (32, 2560),      # v5p:4x4x4, 64 chips, 1M tokens
    "7b": (32, 4096),      # v5p:4x4x8, 128 chips, 1M tokens
    "13b": (40, 5120),     # v5p:4x8x8, 256 chips, 1M tokens
    "30b": (48, 6144),     # 2 slices × v5p:4x8x8, 512 chips, 2M tokens
}
# Tensor-parallel degree where `latentlm bench memory` showed it lowers the peak (else 1).
TENSOR = {"13b": 4}
CPU_SIZES = {"t1": (2, 64), "t2": (3, 128), "t3": (4, 192), "t4": (6, 256)}
POD_FROM_WIDTH = 768
CPU_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "latentlm_tiny.py")


def get_config(size: str = "base"):
    size, _, latents_dir = size.partition(":")
    depth_width, on_pod = _size(size)
    if latents_dir and on_pod:
        raise ValueError(f"{size} is a pod size: pass --config.data.latents_dir={latents_dir}")
    c = pod_config() if on_pod else load_config_file(
        f"{CPU_BASE}:{latents_dir}" if latents_dir else CPU_BASE)
    c.name = f"latentlm_{size}"
    apply_shape(c.model, *depth_width)
    if on_pod:
        fit = tpu_sizing(c.model)
        c.target_topology, c.target_slices = fit["topology"], fit["slices"]
        c.train.global_batch_size = fit["global_batch_size"]
        c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = 1, -1, TENSOR.get(size, 1)
        c.mesh.dcn.data = fit["slices"]
    else:
        c.model.dtype, c.model.attention = "float32", "xla"
        c.model.scan_layers, c.model.remat_policy = False, "none"
    return c


def _size(size: str) -> tuple[tuple[int, int], bool]:
    """(depth, width) and whether ``size`` takes the pod settings."""
    if size in SIZES:
        return SIZES[size], True
    if size in CPU_SIZES:
        return CPU_SIZES[size], False
    spec, _, where = size.partition("-")
    shape = parse_spec(spec)
    if shape is None or where not in ("", "cpu", "pod"):
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}, "
                         f"{', '.join(CPU_SIZES)} or d<depth>w<width>[-cpu|-pod]")
    return shape, where == "pod" or (not where and shape[1] >= POD_FROM_WIDTH)


def pod_config():
    """The pod settings every pod size shares (shape and sizing set by get_config)."""
    c = base_config()
    c.task = "lm"
    m = c.model
    m.vocab_size = 32_000
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat_policy = "full"
    # The Pallas splash kernel: no [B, H, L, L] scores at 4096 tokens. TPU only; elsewhere pass
    # --config.model.attention=dot_product (cuDNN flash on GPU).
    m.attention = "splash"
    m.image_latent_dim = c.vae.image.latent_dim
    m.audio_latent_dim = c.vae.audio.latent_dim
    m.diffusion.schedule = "cosine"
    m.diffusion.prediction = "v"
    m.diffusion.batch_mul = 4
    m.diffusion.target_fraction = 0.5

    d = c.data
    d.source = "latents"
    d.tokenizer = "sentencepiece"
    d.tokenizer_model = "tokenizers/spm32k.model"
    d.seq_len = 4096
    d.num_workers = 8

    t = c.train
    t.num_steps = 100_000
    t.learning_rate = 1e-4  # the authors' AdamW settings (betas 0.9/0.98 and wd 0.01: defaults)
    t.warmup_steps = 2000
    t.log_every = 50
    t.ema_decay = 0.9999
    c.checkpoint.every_steps = 1000
    c.metrics.peak_tflops_per_device = 459.0  # TPU v5p bf16 datasheet peak
    return c
