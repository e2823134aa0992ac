"""The language-model task: cross-entropy over the positions ``ce_mask`` marks."""

from __future__ import annotations

from typing import Any

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


def is_multimodal(config: mlc.ConfigDict) -> bool:
    return config.model.image_latent_dim > 0 or config.model.audio_latent_dim > 0


class LMTask:
    """Language modelling on packed rows (see docs/batch_format.md): text-only (cross-entropy) or
    LatentLM (cross-entropy + λ · next-token diffusion) when a latent modality is configured."""

    def build_model(self, config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        if is_multimodal(config):
            from latentlm_jax.models.latentlm import LatentLM

            return LatentLM(config.model, rngs=rngs)
        return TextLM(config.model, rngs=rngs)

    def loss_fn(self, model, batch, rng):
        if isinstance(model, TextLM) and hasattr(model, "heads"):
            from latentlm_jax.train.latentlm_loss import latentlm_loss

            return latentlm_loss(model, batch, rng)
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        loss, count = masked_cross_entropy(logits, batch["targets"], batch["ce_mask"])
        return loss, {"ce": loss, "ce_tokens": count}

    def batch_logical_axes(self, config: mlc.ConfigDict) -> dict[str, tuple[str, ...]]:
        axes = {k: ("batch", "length") for k in TEXT_KEYS}
        if is_multimodal(config):
            axes.update(modality=("batch", "length"), latent_mask=("batch", "length"),
                        latent_modality=("batch", "length"),
                        latents=("batch", "length", "latent"))
        return axes

    def batch_dtypes(self, config: mlc.ConfigDict) -> dict[str, Any]:
        return {"ce_mask": jnp.bool_, "latent_mask": jnp.bool_, "modality": jnp.int8,
                "latent_modality": jnp.int8, "latents": jnp.float32}

    def batch_shape(self, config: mlc.ConfigDict, key: str) -> tuple[int, ...]:
        b, l = config.train.global_batch_size, config.data.seq_len
        if key == "latents":
            return (b, l, max(config.model.image_latent_dim, config.model.audio_latent_dim))
        return (b, l)

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
