"""A ~1B-parameter text LM for a TPU pod (e.g. v5p-64: 32 chips, FSDP over all of them).

    # on every host of the pod (see launch/tpu_pod.sh):
    latentlm train --config configs/lm_1b.py --workdir gs://BUCKET/runs/lm_1b \
        --config.data.text_files="('gs://BUCKET/corpus/*.txt',)"

18 layers × 2048 wide, 16 query / 8 KV heads of 128, SwiGLU 5632, a 32k SentencePiece vocabulary:
0.98B parameters (0.85B in the blocks). bf16 compute with f32 parameters and AdamW state, full FSDP
("data" = 1 per slice, "fsdp" = fill), layers scanned, matmul outputs saved for the backward pass.
Global batch 512 × 2048 tokens = 1M tokens per step.
"""

from latentlm_jax.config.base import base_config


def get_config():
    c = base_config()
    c.name = "lm_1b"
    c.task = "lm"
    m = c.model
    m.vocab_size = 32_000
    m.num_layers = 18
    m.emb_dim = 2048
    m.num_heads = 16
    m.num_kv_heads = 8
    m.head_dim = 128
    m.mlp_dim = 5632
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat_policy = "save_dots"
    c.data.source = "text_files"
    c.data.text_files = ("corpus/*.txt",)
    c.data.tokenizer = "sentencepiece"
    c.data.tokenizer_model = "tokenizers/spm32k.model"
    c.data.seq_len = 2048
    c.data.num_workers = 8
    c.train.global_batch_size = 512
    c.train.num_steps = 100_000
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 2000
    c.train.log_every = 50
    c.checkpoint.every_steps = 1000
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = 1, -1, 1
    c.metrics.peak_tflops_per_device = 459.0  # TPU v5p bf16 datasheet peak
    return c
