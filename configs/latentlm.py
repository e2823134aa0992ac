"""The LatentLM scaling family, one size per argument: ``configs/latentlm.py:<size>``.

    latentlm train --config configs/latentlm.py:7b --workdir gs://BUCKET/runs/latentlm_7b \
        --config.data.latents_dir=/gcs/BUCKET/latents   # `latentlm encode` output, gcsfuse-mounted
    latentlm bench memory --config configs/latentlm.py:7b  # compile for its topology: fits?
    latentlm bench memory --config configs/latentlm.py --all   # the whole family, one table

Sizes are the authors' scaling family (``Transformer_Base`` … ``Transformer_13B`` in their
LatentLM code) plus one ~30B step beyond it (48 × 6144: 29.0B in the decoder blocks). Their
blocks: multi-head attention with 64- or 128-wide heads, SwiGLU with ``mlp_ratio=6`` meaning a
hidden width of int(6·E·2/3 / 64)·64 = 4·E, and a diffusion head of 3 blocks as wide as the model
with the same SwiGLU (our ``head.mlp_ratio`` is the SwiGLU hidden width over the head width, so
4.0 here). A block is then 16·E² parameters, more than the 12·E² of a LLaMA block, so the names
undersell the decoder (their "7B" has 8.6B in its blocks), and each modality's head adds ~49·E²:
``latentlm bench memory`` prints the exact counts.

Every size: image + audio latents (dims of the σ-VAE defaults in ``config/vae.py``), K = 4
diffusion draws per latent, the head run on gathered latent targets (half of each row's slots),
4096-token rows of interleaved documents, a 32k SentencePiece vocabulary, bf16 compute with f32
parameters, AdamW state and EMA, layers scanned, full remat, splash attention. Each names the TPU
topology it is sized for (``target_topology``, ``target_slices``), which ``latentlm bench memory``
compiles for.

Parallelism: FSDP over every chip of a slice, data parallelism across slices (``mesh.dcn.data``).
Tensor parallelism (``--config.mesh.ici.tensor=N``; heads, SwiGLU widths and the vocabulary divide
by 8 in every size) pays when the global batch has fewer rows than there are chips: the
residual-stream activations are replicated over ``tensor``, so with ≥ 2 rows per chip, as here,
it would add activation memory rather than save any.

The head runs on ``target_fraction`` = half of each row's positions per modality; latent targets
beyond that are dropped and counted (``*_latents_dropped`` in the metrics): raise it for data whose
rows are mostly one modality.
"""

from latentlm_jax.config.base import base_config

# size: (layers, width, heads, topology, slices, global batch in 4096-token rows)
# Heads are 64 wide up to `medium`, 128 wide above (as the authors'). Topologies are TPU v5p
# (95 GiB HBM per chip): "v5p:AxBxC" is A·B·C chips, e.g. v5p:4x4x4 = 64 chips = a v5p-128.
SIZES = {
    "base": (12, 768, 12, "v5p:2x2x1", 1, 32),        # 4 chips, 128k tokens per step
    "medium": (24, 1024, 16, "v5p:2x2x2", 1, 64),     # 8 chips, 256k tokens
    "large": (24, 1536, 12, "v5p:2x2x4", 1, 128),     # 16 chips, 512k tokens
    "xl": (24, 2048, 16, "v5p:2x4x4", 1, 256),        # 32 chips, 1M tokens
    "3b": (32, 2560, 20, "v5p:4x4x4", 1, 256),        # 64 chips, 1M tokens
    "7b": (32, 4096, 32, "v5p:4x4x8", 1, 256),        # 128 chips, 1M tokens
    "13b": (40, 5120, 40, "v5p:4x8x8", 1, 256),       # 256 chips, 1M tokens
    "30b": (48, 6144, 48, "v5p:4x8x8", 2, 512),       # 2 slices × 256 chips, 2M tokens
}
# Rows per chip shrink with size (8 up to xl, then 4, 2, 1, 1): at 8 rows 3b needs 103 GiB, at 8
# 7b 232, at 4 13b 266 and at 2 30b 131 (docs/benchmarks.md "LatentLM memory proofs"). More
# tokens per step = more chips (slices), not more rows per chip.


def get_config(size: str = "base"):
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    layers, width, heads, topology, slices, batch = SIZES[size]
    c = base_config()
    c.name = f"latentlm_{size}"
    c.task = "lm"
    c.target_topology = topology
    c.target_slices = slices

    m = c.model
    m.vocab_size = 32_000
    m.num_layers = layers
    m.emb_dim = width
    m.num_heads = m.num_kv_heads = heads
    m.head_dim = width // heads
    m.mlp_dim = 4 * width  # the authors' mlp_ratio=6 under SwiGLU's 2/3
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat_policy = "full"
    # The Pallas splash kernel: no [B, H, L, L] scores at 4096 tokens. TPU only; elsewhere pass
    # --config.model.attention=dot_product (cuDNN flash on GPU).
    m.attention = "splash"
    m.image_latent_dim = c.vae.image.latent_dim
    m.audio_latent_dim = c.vae.audio.latent_dim
    m.head.depth = 3
    m.head.width = 0  # = emb_dim
    m.head.mlp_ratio = 4.0
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
    t.global_batch_size = batch
    t.num_steps = 100_000
    t.learning_rate = 1e-4  # the authors' AdamW settings (betas 0.9/0.98 and wd 0.01: defaults)
    t.warmup_steps = 2000
    t.log_every = 50
    t.ema_decay = 0.9999
    c.checkpoint.every_steps = 1000

    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = 1, -1, 1
    c.mesh.dcn.data = slices
    c.metrics.peak_tflops_per_device = 459.0  # TPU v5p bf16 datasheet peak
    return c
