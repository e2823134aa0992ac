"""The LM objectives: CE over text targets (text LM), plus λ · per-token diffusion loss over
latents (LatentLM).

``model.diffusion.loss_weighting`` says how the modalities' diffusion losses add up:
``"per_modality"`` = Σ_m mean_m (each modality weighs λ whatever its share of targets);
``"per_target"`` = Σ_m (mean_m · count_m) / Σ_m count_m, one mean over every latent target of
every modality (what one modality gives the authors). The two agree with one modality. The sums
and counts are over the global batch (the jitted step reduces a batch-sharded layout itself)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from latentlm_jax.data.target_capacity import head_slots_per_row
from latentlm_jax.diffusion.loss import diffusion_loss
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.lm.cross_entropy import masked_cross_entropy
from latentlm_jax.modality import MODALITY_NAMES
from latentlm_jax.parallel.logical import constrain

LOSS_WEIGHTINGS = ("per_modality", "per_target")


def gather_targets(mask: jax.Array, capacity: int, *arrays: jax.Array
                   ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
    """Per row, the first ``capacity`` positions where ``mask`` [B, L] holds, gathered from each
    [B, L, ...] array into [B, capacity, ...]; returns (valid [B, capacity], dropped count,
    gathered arrays). Rows stay rows, so a batch-sharded layout is kept."""
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=capacity, fill_value=0)[0])(mask)
    count = mask.sum(axis=1)
    valid = jnp.arange(capacity)[None, :] < count[:, None]
    dropped = jnp.maximum(count - capacity, 0).sum()
    out = [jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)
           for a in arrays]
    return valid, dropped, out


def text_lm_loss(model, batch: dict[str, jax.Array], rng: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy of a text LM over the positions ``ce_mask`` marks (``rng`` is unused)."""
    del rng
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    loss, count = masked_cross_entropy(logits, batch["targets"], batch["ce_mask"])
    return loss, {"ce": loss, "ce_tokens": count}


def diffusion_loss_terms(model, batch: dict[str, jax.Array], hidden: jax.Array, rng: jax.Array,
                         weighting: str = "per_modality"
                         ) -> tuple[list[jax.Array], dict[str, jax.Array]]:
    """Every modality's λ-weighted diffusion term on ``hidden`` (position i's state predicts the
    latent at i+1 where ``latent_mask``), in modality order, and their metrics; the terms add up
    to λ · the diffusion loss under ``weighting`` (module docstring). ``diff/<modality>`` is each
    modality's mean under either weighting."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; expected one of "
                         f"{LOSS_WEIGHTINGS}")
    cfg = model.diffusion
    means, counts, metrics = [], [], {}
    next_latents = jnp.roll(batch["latents"], -1, axis=1)
    schedule = make_schedule(cfg.schedule)
    seq_len = hidden.shape[1]
    for m, dim in model.dims.items():
        name = MODALITY_NAMES[m]
        mask = batch["latent_mask"] & (batch["latent_modality"] == m)
        x0, cond = next_latents[..., :dim], hidden
        if cfg.target_fraction > 0:
            # The pipeline packs rows to these slots (data/target_capacity.py): the dropped count
            # is the check that reads 0.
            capacity = head_slots_per_row(cfg.target_fraction, seq_len)
            mask, dropped, (x0, cond) = gather_targets(mask, capacity, x0, cond)
            cond = constrain(cond, ("batch", "length", "act_embed"))
            metrics[f"{name}_latents_dropped"] = dropped
        loss_m, _ = diffusion_loss(model.head(m), x0, cond, mask, jax.random.fold_in(rng, m),
                                   schedule, batch_mul=cfg.batch_mul, prediction=cfg.prediction)
        count_m = mask.sum()
        means.append(loss_m)
        counts.append(count_m)
        metrics[f"diff/{name}"] = loss_m
        metrics[f"{name}_latents"] = count_m
    if weighting == "per_modality":
        return [cfg.loss_weight * loss_m for loss_m in means], metrics
    # loss_m · count_m is modality m's summed per-target loss (0 when it has no target)
    total = jnp.maximum(sum(c.astype(jnp.float32) for c in counts), 1.0)
    return [cfg.loss_weight * loss_m * c.astype(jnp.float32) / total
            for loss_m, c in zip(means, counts, strict=True)], metrics


def latentlm_loss(model, batch: dict[str, jax.Array], rng: jax.Array,
                  weighting: str = "per_modality") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Position i's hidden state predicts element i+1: a token through the LM head (where
    ``ce_mask``) or a latent through its modality's diffusion head (where ``latent_mask``);
    ``weighting``: ``model.diffusion.loss_weighting``."""
    hidden = model.hidden(batch)
    ce, count = masked_cross_entropy(model.logits(hidden), batch["targets"], batch["ce_mask"])
    total = ce
    metrics = {"ce": ce, "ce_tokens": count}
    terms, diffusion_metrics = diffusion_loss_terms(model, batch, hidden, rng, weighting)
    for term in terms:
        total = total + term
    metrics.update(diffusion_metrics)
    return total, metrics
