"""Model families by size: a transformer's shape, and its TPU sizing, from depth and width alone.

The rules of ``configs/latentlm.py`` (the authors' LatentLM scaling family; docs/scaling.md):

- attention heads ``HEAD_WIDTH_SMALL`` (64) wide up to ``WIDE_FROM`` (1024) model width, 128
  above; as many heads as fit, keys and values on every head (no grouping);
- a SwiGLU FFN ``FFN_RATIO`` (4) × the width: the authors' ``mlp_ratio=6`` under SwiGLU's 2/3;
- per latent modality a diffusion head of ``HEAD_DEPTH`` (3) blocks as wide as the model, its
  SwiGLU ``HEAD_MLP_RATIO`` (4) × that width;
- on TPU v5p: the smallest power-of-two chip count (at least one 4-chip host) that leaves at most
  ``BLOCK_PARAMS_PER_CHIP`` decoder parameters per chip; slices of at most ``SLICE_CHIPS`` chips
  joined by DCN; ``ROWS_PER_CHIP`` rows per chip, at most ``ROWS_PER_SLICE`` per slice (1M tokens
  of 4096-token rows), so rows per chip fall from 8 as the model outgrows the batch.

The TPU constants are the sizing that ``latentlm bench memory`` proved for the named sizes
(docs/benchmarks.md "LatentLM memory proofs"): a rule that reproduces those proofs, not a memory
model. A size they derive that was never compiled is unproven until ``bench memory`` says it fits.

A leaf of the config package: the analytic parameter counts here are what the sizing uses, and
tests check them against the built model.
"""

from __future__ import annotations

import math
import re
from typing import Any

HEAD_WIDTH_SMALL, HEAD_WIDTH_LARGE, WIDE_FROM = 64, 128, 1024
FFN_RATIO = 4
HEAD_DEPTH, HEAD_MLP_RATIO = 3, 4.0

BLOCK_PARAMS_PER_CHIP = 80_000_000
MIN_CHIPS = 4  # one v5p host: the 2x2x1 slice
SLICE_CHIPS = 256  # v5p:4x8x8
ROWS_PER_CHIP, ROWS_PER_SLICE = 8, 256

# The diffusion head's sinusoidal timestep features (models/diffusion_head.py, train/flops.py).
HEAD_FREQ_DIM = 256

_SPEC = re.compile(r"d(\d+)w(\d+)")


def head_width(width: int) -> int:
    """Attention head width for a model ``width``: 64 up to 1024, 128 above."""
    return HEAD_WIDTH_SMALL if width <= WIDE_FROM else HEAD_WIDTH_LARGE


def parse_spec(spec: str) -> tuple[int, int] | None:
    """``"d4w128"`` → (depth 4, width 128); None when ``spec`` is not of that form."""
    match = _SPEC.fullmatch(spec)
    return (int(match[1]), int(match[2])) if match else None


def apply_shape(m: Any, depth: int, width: int) -> Any:
    """Sets ``config.model`` ``m`` to the family's shape for ``depth`` × ``width``: decoder,
    heads, FFN and diffusion heads. Raises ValueError for a shape the rules cannot make."""
    hd = head_width(width)
    if depth < 1:
        raise ValueError(f"a {depth} × {width} model: the depth must be ≥ 1")
    if width < hd or width % hd:
        raise ValueError(f"a {depth} × {width} model: the width must be a multiple of its "
                         f"{hd}-wide attention heads")
    m.num_layers = depth
    m.emb_dim = width
    m.head_dim = hd
    m.num_heads = m.num_kv_heads = width // hd
    m.mlp_dim = FFN_RATIO * width
    m.head.depth = HEAD_DEPTH
    m.head.width = 0  # = emb_dim
    m.head.mlp_ratio = HEAD_MLP_RATIO
    return m


# ------------------------------------------------------------------------------ parameter counts
def decoder_params(m: Any) -> int:
    """Decoder parameters of ``config.model`` ``m``: per block two RMSNorms, q/k/v/o and a SwiGLU
    (16·E² + 2·E in the family), plus the final norm; the norms hold no parameter when
    ``model.norm_scale`` is False."""
    e = m.emb_dim
    norm = e if m.get("norm_scale", True) else 0
    attention = e * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    block = 2 * norm + attention + 3 * e * m.mlp_dim
    return m.num_layers * block + norm


def diffusion_head_params(m: Any, latent_dim: int) -> int:
    """One modality's diffusion head: x_in, cond norm + projection, timestep MLP, ``head.depth``
    blocks (RMSNorm, adaLN shift/scale/gate with bias, SwiGLU), final norm + adaLN, out. With
    the family's proportions 49·E² + O(E)."""
    w = m.head.width or m.emb_dim
    scaled = m.get("norm_scale", True)  # False: the three kinds of norm hold no parameter
    hidden = max(1, round(w * m.head.mlp_ratio))
    block = w * scaled + (3 * w * w + 3 * w) + 3 * w * hidden
    return (latent_dim * w + m.emb_dim * scaled + m.emb_dim * w + HEAD_FREQ_DIM * w + w * w
            + m.head.depth * block + w * scaled + (2 * w * w + 2 * w) + w * latent_dim)


def embedding_params(m: Any, latent_dims: dict[int, int]) -> int:
    """Token embedding, output projection (unless tied) and the latent input projections."""
    vocab = m.vocab_size * m.emb_dim * (1 if m.tie_embeddings else 2)
    return vocab + sum(d * m.emb_dim for d in latent_dims.values())


# ------------------------------------------------------------------------------ TPU v5p sizing
def v5p_topology(chips: int) -> str:
    """A v5p slice of ``chips`` (a power of two ≥ 4) as cubic as the torus allows: 2x2x1 for one
    host, then AxBxC with A ≤ B ≤ C (8 → 2x2x2, 16 → 2x2x4, 32 → 2x4x4, 256 → 4x8x8)."""
    k = chips.bit_length() - 1
    if chips < MIN_CHIPS or chips != 1 << k:
        raise ValueError(f"a v5p slice here is a power of two ≥ {MIN_CHIPS} chips; got {chips}")
    if k == 2:
        return "v5p:2x2x1"
    exps = [k // 3 + (i >= 3 - k % 3) for i in range(3)]
    return "v5p:" + "x".join(str(1 << e) for e in exps)


def tpu_sizing(m: Any) -> dict[str, Any]:
    """Chips, slices, topology of one slice and global batch (rows) for ``config.model`` ``m``."""
    need = max(1, math.ceil(decoder_params(m) / BLOCK_PARAMS_PER_CHIP))
    chips = max(MIN_CHIPS, 1 << (need - 1).bit_length())
    slices = max(1, chips // SLICE_CHIPS)
    return {"chips": chips, "slices": slices, "topology": v5p_topology(chips // slices),
            "global_batch_size": min(ROWS_PER_CHIP * chips, ROWS_PER_SLICE * slices)}
