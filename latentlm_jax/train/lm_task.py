"""The language-model task: cross-entropy over the positions ``ce_mask`` marks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import nnx

from latentlm_jax.models.transformer import TextLM
from latentlm_jax.train.flops import transformer_flops_per_token

TEXT_KEYS = ("tokens", "targets", "ce_mask", "segment_ids", "positions")


def masked_cross_entropy(logits: jax.Array, targets: jax.Array,
                         mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean CE over masked positions (float32) and the number of those positions."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = mask.astype(jnp.float32)
    count = mask.sum()
    return (ce * mask).sum() / jnp.maximum(count, 1.0), count


class LMTask:
    """Text language modelling on packed rows (see docs/batch_format.md)."""

    def build_model(self, config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return TextLM(config.model, rngs=rngs)

    def loss_fn(self, model, batch, rng):
        del rng
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        loss, count = masked_cross_entropy(logits, batch["targets"], batch["ce_mask"])
        return loss, {"ce": loss, "ce_tokens": count}

    def batch_logical_axes(self, config: mlc.ConfigDict) -> dict[str, tuple[str, ...]]:
        return {k: ("batch", "length") for k in TEXT_KEYS}

    def train_iterator(self, config: mlc.ConfigDict, process_index: int, process_count: int):
        from latentlm_jax.data.pipeline import build_train_iterator

        return build_train_iterator(config, process_index=process_index,
                                    process_count=process_count)

    def flops_per_step(self, config: mlc.ConfigDict) -> float:
        tokens = config.train.global_batch_size * config.data.seq_len
        return transformer_flops_per_token(config.model, config.data.seq_len) * tokens

    def items_per_step(self, config: mlc.ConfigDict) -> tuple[str, float]:
        return "tokens", float(config.train.global_batch_size * config.data.seq_len)

    def evaluate(self, model, config, workdir, step):
        return {}
