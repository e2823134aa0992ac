"""AdamW with linear warmup + cosine decay and global-norm clipping (the paper's recipe)."""

from __future__ import annotations

import jax
import ml_collections as mlc
import optax


def learning_rate_schedule(t: mlc.ConfigDict) -> optax.Schedule:
    """0 → learning_rate over warmup_steps, then cosine to learning_rate · min_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=max(t.num_steps, t.warmup_steps + 1),
        end_value=t.learning_rate * t.min_lr_ratio,
    )


def _decay_mask(params):
    """Weight decay on matrices only: norms' scales (1-D) are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(t: mlc.ConfigDict) -> optax.GradientTransformation:
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    parts.append(optax.adamw(learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
                             weight_decay=t.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)
