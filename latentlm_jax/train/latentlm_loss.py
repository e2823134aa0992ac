"""The LatentLM objective: CE over text targets + λ · per-token diffusion loss over latents."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from latentlm_jax.diffusion.loss import diffusion_loss
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.models.latentlm import MODALITY_NAMES
from latentlm_jax.train.lm_task import masked_cross_entropy


def latentlm_loss(model, batch: dict[str, jax.Array], rng: jax.Array
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Position i's hidden state predicts element i+1: a token through the LM head (where
    ``ce_mask``) or a latent through its modality's diffusion head (where ``latent_mask``)."""
    cfg = model.diffusion
    hidden = model.hidden(batch)
    ce, count = masked_cross_entropy(model.logits(hidden), batch["targets"], batch["ce_mask"])
    total = ce
    metrics = {"ce": ce, "ce_tokens": count}
    next_latents = jnp.roll(batch["latents"], -1, axis=1)
    schedule = make_schedule(cfg.schedule)
    for m, dim in model.dims.items():
        mask = batch["latent_mask"] & (batch["latent_modality"] == m)
        loss_m, _ = diffusion_loss(model.head(m), next_latents[..., :dim], hidden, mask,
                                   jax.random.fold_in(rng, m), schedule,
                                   batch_mul=cfg.batch_mul,
                                   prediction=cfg.prediction)
        total = total + cfg.loss_weight * loss_m
        name = MODALITY_NAMES[m]
        metrics[f"diff/{name}"] = loss_m
        metrics[f"{name}_latents"] = mask.sum()
    return total, metrics
