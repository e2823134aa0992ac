"""The language-model task: a text LM, or a LatentLM when a latent modality is configured."""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax.data.packing import LATENT_KEYS, TEXT_KEYS
from latentlm_jax.data.pipeline import build_train_iterator
from latentlm_jax.lm.loss import latentlm_loss, text_lm_loss
from latentlm_jax.modality import is_multimodal, max_latent_dim
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.models.transformer import TextLM
from latentlm_jax.train.flops import (
    latentlm_extra_flops_per_row,
    remat_flops_per_token,
    transformer_flops_per_token,
)


class LMTask:
    """Language modelling on packed rows (see docs/batch_format.md): text-only (cross-entropy) or
    LatentLM (cross-entropy + λ · next-token diffusion) when a latent modality is configured.
    The model and its loss are chosen once, here, from the config (:func:`is_multimodal`)."""

    def __init__(self, config: mlc.ConfigDict):
        self.multimodal = is_multimodal(config)
        weighting = config.model.diffusion.get("loss_weighting", "per_modality")
        self.loss_fn = (functools.partial(latentlm_loss, weighting=weighting) if self.multimodal
                        else text_lm_loss)
        self._eval = None  # the held-out rows, built at the first evaluate

    def build_model(self, config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        if self.multimodal:
            return LatentLM(config.model, rngs=rngs)
        return TextLM(config.model, rngs=rngs)

    def batch_logical_axes(self, config: mlc.ConfigDict) -> dict[str, tuple[str, ...]]:
        axes = {k: ("batch", "length") for k in TEXT_KEYS}
        if self.multimodal:
            axes.update({k: ("batch", "length") for k in LATENT_KEYS})
            axes["latents"] = ("batch", "length", "latent")
        return axes

    def batch_dtypes(self, config: mlc.ConfigDict) -> dict[str, Any]:
        return {"ce_mask": jnp.bool_, "latent_mask": jnp.bool_, "modality": jnp.int8,
                "latent_modality": jnp.int8, "latents": jnp.float32}

    def batch_shape(self, config: mlc.ConfigDict, key: str) -> tuple[int, ...]:
        b, l = config.train.global_batch_size, config.data.seq_len
        if key == "latents":
            return (b, l, max_latent_dim(config.model))
        return (b, l)

    def train_iterator(self, config: mlc.ConfigDict, process_index: int, process_count: int):
        return build_train_iterator(config, process_index=process_index,
                                    process_count=process_count)

    def flops_per_step(self, config: mlc.ConfigDict) -> float:
        """Backbone + LM head, and for a LatentLM its latent projections and diffusion heads
        (K draws per latent slot): forward + backward, what MFU counts."""
        rows, seq_len = config.train.global_batch_size, config.data.seq_len
        flops = transformer_flops_per_token(config.model, seq_len) * rows * seq_len
        if self.multimodal:
            flops += latentlm_extra_flops_per_row(config.model, seq_len) * rows
        return flops

    def recompute_flops_per_step(self, config: mlc.ConfigDict) -> float:
        """Forward FLOPs ``model.remat_policy`` recomputes (hardware FLOPs beyond the model's)."""
        rows, seq_len = config.train.global_batch_size, config.data.seq_len
        return remat_flops_per_token(config.model, seq_len) * rows * seq_len

    def items_per_step(self, config: mlc.ConfigDict) -> tuple[str, float]:
        return "tokens", float(config.train.global_batch_size * config.data.seq_len)

    def evaluate(self, model: nnx.Module, config: mlc.ConfigDict, workdir: str,
                 step: int) -> dict[str, float]:
        """Held-out ``loss``, ``text_ce``, ``text_bits_per_token`` and ``diffusion/<modality>``
        on rows built once and kept (:class:`~latentlm_jax.lm.evaluate.HeldOutEval`)."""
        del workdir, step
        if self._eval is None:
            from latentlm_jax.lm.evaluate import HeldOutEval

            self._eval = HeldOutEval(config, self.multimodal, self.batch_logical_axes(config),
                                     self.batch_dtypes(config))
        return self._eval(model)
