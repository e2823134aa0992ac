"""Held-out evaluation of a text LM / LatentLM: fixed rows, fixed diffusion draws, jitted sums.

What is reported (docs/evaluation.md), under ``eval/`` in metrics.jsonl and TensorBoard:

- ``text_ce``: cross-entropy per text target (``ce_mask``), in nats;
  ``text_bits_per_token`` = ``text_ce / ln 2``;
- ``diffusion/<modality>``: the training objective's per-latent diffusion loss, with each
  latent's K = ``data.eval_draws`` draws of (t, ε) fixed: keyed by (modality, document number,
  position in the document, draw), t stratified over the K draws (t_k = ⌊T·(k + u)/K⌋ with one
  fixed u ~ U[0, 1) per latent), so each t is still uniform and the estimate is unbiased for the
  training loss's expectation, with less variance;
- ``loss`` = ``text_ce + λ · Σ_m diffusion/<m>``: what the training loss estimates.

No bits per dimension for latents: the diffusion MSE is not a likelihood (an ELBO would need the
per-t weighting and a decoder term), so only text gets bits.

The draws depend on the documents alone, not on how they are packed, batched or sharded: runs
with another ``train.global_batch_size``, mesh or ``seq_len`` (that still fits the documents)
evaluate the same quantity.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from latentlm_jax.diffusion.loss import v_from_x0_eps
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.modality import MODALITY_NAMES
from latentlm_jax.parallel.logical import current_rules, logical_to_mesh_spec

EVAL_KEY = 0  # the root of every eval draw


def eval_draws(key: jax.Array, modality: int, doc_ids: jax.Array, positions: jax.Array,
               draws: int, num_timesteps: int, dim: int) -> tuple[jax.Array, jax.Array]:
    """The fixed draws for every position of ``doc_ids`` / ``positions`` [B, L]: t int32
    [B, K, L] (stratified over the K draws) and ε float32 [B, K, L, dim]."""
    base = jax.random.fold_in(key, modality)

    def one(doc, pos):
        k = jax.random.fold_in(jax.random.fold_in(base, jnp.maximum(doc, 0)), pos)
        u = jax.random.uniform(jax.random.fold_in(k, draws), ())
        t = jnp.floor(num_timesteps * (jnp.arange(draws) + u) / draws).astype(jnp.int32)
        eps = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(k, j), (dim,)))(
            jnp.arange(draws))
        return jnp.minimum(t, num_timesteps - 1), eps

    t, eps = jax.vmap(jax.vmap(one))(doc_ids, positions)  # [B, L, K], [B, L, K, D]
    return jnp.moveaxis(t, 2, 1), jnp.moveaxis(eps, 2, 1)


def diffusion_sums(head, x0: jax.Array, cond: jax.Array, mask: jax.Array, t: jax.Array,
                   eps: jax.Array, schedule, prediction: str) -> tuple[jax.Array, jax.Array]:
    """(Σ squared error over masked latents and draws, averaged over dims; masked count), for
    given draws ``t`` [B, K, L], ``eps`` [B, K, L, D]: ``diffusion_loss``'s arithmetic, one draw
    at a time (the head's activations for one draw only)."""
    total = jnp.zeros((), jnp.float32)
    weight = mask.astype(jnp.float32)
    for j in range(t.shape[1]):
        tj, ej = t[:, j:j + 1], eps[:, j:j + 1]  # [B, 1, L], [B, 1, L, D]
        alpha = schedule.alpha_t(tj)[..., None]
        sigma = schedule.sigma_t(tj)[..., None]
        x0_j = x0[:, None].astype(jnp.float32)
        x_t = alpha * x0_j + sigma * ej
        target = ej if prediction == "eps" else v_from_x0_eps(x0_j, ej, alpha, sigma)
        pred = head(x_t, tj, cond[:, None])
        mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)[:, 0]  # [B, L]
        total = total + jnp.sum(mse * weight)
    return total, weight.sum()


@nnx.jit(static_argnames=("multimodal", "draws"))
def eval_sums(model, batch: dict[str, jax.Array], doc_ids: jax.Array, *, multimodal: bool,
              draws: int) -> dict[str, jax.Array]:
    """Sums over one batch of eval rows: ``ce`` / ``ce_count`` and, per modality name,
    ``<name>`` (squared error over latents × draws) / ``<name>_count`` (latents)."""
    if multimodal:
        hidden = model.hidden(batch)
        logits = model.logits(hidden)
    else:
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["targets"])
    mask = batch["ce_mask"].astype(jnp.float32)
    out = {"ce": (ce * mask).sum(), "ce_count": mask.sum()}
    if not multimodal:
        return out
    cfg = model.diffusion
    schedule = make_schedule(cfg.schedule)
    next_latents = jnp.roll(batch["latents"], -1, axis=1)
    key = jax.random.key(EVAL_KEY)
    for m, dim in model.dims.items():
        name = MODALITY_NAMES[m]
        m_mask = batch["latent_mask"] & (batch["latent_modality"] == m)
        t, eps = eval_draws(key, m, doc_ids, batch["positions"], draws, schedule.num_timesteps,
                            dim)
        out[name], out[f"{name}_count"] = diffusion_sums(
            model.head(m), next_latents[..., :dim], hidden, m_mask, t, eps, schedule,
            cfg.prediction)
    return out


def summarise(sums: dict[str, float], model_dims: dict[int, int], loss_weight: float,
              draws: int, weighting: str = "per_modality") -> dict[str, float]:
    """Summed eval terms → the reported metrics (keys without the ``eval/`` prefix); ``loss``
    adds the modalities' diffusion losses as ``model.diffusion.loss_weighting`` says
    (lm/loss.py)."""
    ce = sums["ce"] / max(sums["ce_count"], 1.0)
    out = {"text_ce": ce, "text_bits_per_token": ce / math.log(2)}
    diffusion = 0.0
    for m in model_dims:
        name = MODALITY_NAMES[m]
        value = sums[name] / (draws * max(sums[f"{name}_count"], 1.0))
        out[f"diffusion/{name}"] = value
        diffusion += value
    if weighting == "per_target" and model_dims:
        total = sum(sums[f"{MODALITY_NAMES[m]}_count"] for m in model_dims)
        diffusion = sum(sums[MODALITY_NAMES[m]] for m in model_dims) / (draws * max(total, 1.0))
    out["loss"] = ce + loss_weight * diffusion
    return out


class HeldOutEval:
    """The held-out rows, built once (the same rows at every eval), cut into batches of the
    trainer's micro-batch size (padded with empty rows) and put on the mesh like train batches.

    Multi-process: every process builds all rows (deterministic), and each global batch is made
    with ``jax.make_array_from_callback`` from that same copy, so each device gets its shard."""

    def __init__(self, config: mlc.ConfigDict, multimodal: bool,
                 axes: dict[str, tuple[str, ...]], dtypes: dict[str, Any]):
        from latentlm_jax.data.pipeline import build_eval_rows

        rows, doc_ids = build_eval_rows(config)
        self.multimodal = multimodal
        self.draws = int(config.data.eval_draws)
        self.weighting = config.model.diffusion.get("loss_weighting", "per_modality")
        self.axes = {**axes, "doc_ids": ("batch", "length")}
        self.num_rows = len(doc_ids)
        size = config.train.global_batch_size // config.train.grad_accum_steps
        pad = -len(doc_ids) % size
        rows = {k: np.asarray(v, dtypes.get(k, np.int32)) for k, v in rows.items()}
        rows["doc_ids"] = doc_ids
        rows = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                if pad else v for k, v in rows.items()}
        rows["doc_ids"][len(doc_ids):] = -1
        self.batches = [{k: v[i:i + size] for k, v in rows.items()}
                        for i in range(0, len(rows["doc_ids"]), size)]

    def _to_device(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        ctx = current_rules()
        if ctx is None:
            return {k: jnp.asarray(v) for k, v in batch.items()}
        mesh, rules = ctx
        out = {}
        for k, v in batch.items():
            spec = logical_to_mesh_spec(self.axes[k], rules, mesh.axis_names)
            out[k] = jax.make_array_from_callback(v.shape, NamedSharding(mesh, spec),
                                                  lambda idx, v=v: v[idx])
        return out

    def __call__(self, model) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in self.batches:
            arrays = self._to_device(batch)
            doc_ids = arrays.pop("doc_ids")
            sums = eval_sums(model, arrays, doc_ids, multimodal=self.multimodal,
                             draws=self.draws)
            for k, v in jax.device_get(sums).items():
                totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
        dims = model.dims if self.multimodal else {}
        weight = model.diffusion.loss_weight if self.multimodal else 0.0
        return summarise(totals, dims, weight, self.draws, self.weighting)
