"""``data.source = "synthetic"``: one fixed random batch, for ``latentlm bench train`` only.

The layout is the authors' class-conditional LatentLM step (docs/benchmarks.md): in every row,
position 0 holds a text token (the class) and positions 1 … L−1 hold latents of the first
enabled modality (image, else audio), each position predicting the next latent
(``latent_mask`` at 0 … L−2; no cross-entropy target). A text-only model gets random tokens with
every next token a cross-entropy target. Each row is one document (``segment_ids`` 1). The
trainer refuses this source (``data/pipeline.py``): its numbers are for timing, not learning.
"""

from __future__ import annotations

import ml_collections as mlc
import numpy as np

from latentlm_jax.modality import SPECIAL_TOKENS, latent_dims, max_latent_dim

NUM_SPECIAL = len(SPECIAL_TOKENS)
LATENT_ID = SPECIAL_TOKENS.index("<latent>")
NUM_CLASSES = 256  # class tokens are drawn from the first 256 ids after the special tokens


def synthetic_batch(config: mlc.ConfigDict, process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows (``global_batch_size / process_count``) of the synthetic batch, drawn
    from ``data.seed`` (docs/batch_format.md keys and dtypes)."""
    rows, length = config.train.global_batch_size // process_count, config.data.seq_len
    vocab = config.model.vocab_size
    rng = np.random.default_rng(config.data.seed)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()
    segment_ids = np.ones((rows, length), np.int32)
    dims = latent_dims(config.model)
    if not dims:
        tokens = rng.integers(NUM_SPECIAL, vocab, size=(rows, length), dtype=np.int32)
        targets = np.zeros_like(tokens)
        targets[:, :-1] = tokens[:, 1:]
        ce_mask = np.zeros((rows, length), bool)
        ce_mask[:, :-1] = True
        return {"tokens": tokens, "targets": targets, "ce_mask": ce_mask,
                "segment_ids": segment_ids, "positions": positions}
    modality, dim = next(iter(sorted(dims.items())))
    tokens = np.full((rows, length), LATENT_ID, np.int32)
    tokens[:, 0] = rng.integers(NUM_SPECIAL, min(vocab, NUM_SPECIAL + NUM_CLASSES), size=rows)
    input_modality = np.full((rows, length), modality, np.int8)
    input_modality[:, 0] = 0
    latents = np.zeros((rows, length, max_latent_dim(config.model)), np.float32)
    latents[:, 1:, :dim] = rng.standard_normal((rows, length - 1, dim), dtype=np.float32)
    latent_mask = np.zeros((rows, length), bool)
    latent_mask[:, :-1] = True
    return {
        "tokens": tokens,
        "targets": np.zeros((rows, length), np.int32),
        "ce_mask": np.zeros((rows, length), bool),
        "segment_ids": segment_ids,
        "positions": positions,
        "modality": input_modality,
        "latents": latents,
        "latent_mask": latent_mask,
        "latent_modality": np.where(latent_mask, modality, 0).astype(np.int8),
    }
