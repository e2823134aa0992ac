"""LatentLM: one causal Transformer over interleaved text tokens and continuous latents.

Inputs: token embeddings at text positions, a linear projection of the (normalised) latent at latent
positions (one projection per modality). Outputs: LM logits (cross-entropy on text targets) and, for
every position whose next element is a latent, the hidden state that conditions that modality's
next-token diffusion head.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax.modality import MODALITY_NAMES, latent_dims
from latentlm_jax.models.diffusion_head import DiffusionHead
from latentlm_jax.models.layers import Dense, normal_init
from latentlm_jax.models.transformer import TextLM, compute_dtype, model_options
from latentlm_jax.parallel.logical import constrain, param


class DiffusionSettings(NamedTuple):
    schedule: str
    prediction: str
    batch_mul: int
    loss_weight: float
    target_fraction: float


class LatentLM(TextLM):
    """TextLM + per-modality latent input projections and diffusion heads."""

    def __init__(self, cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        d = cfg.diffusion
        # Plain values (static, hashable) for the loss and the samplers.
        self.diffusion = DiffusionSettings(d.schedule, d.prediction, d.batch_mul, d.loss_weight,
                                           d.target_fraction)
        dt = compute_dtype(cfg)
        width = cfg.head.width or cfg.emb_dim
        self.dims = latent_dims(cfg)
        norm_scale, _, init = model_options(cfg)
        self.latent_in = nnx.Dict({
            MODALITY_NAMES[m]: Dense(d, cfg.emb_dim, ("latent", "embed"), init_std=cfg.init_std,
                                     dtype=dt, rngs=rngs, init=init)
            for m, d in self.dims.items()})
        self.heads = nnx.Dict({
            MODALITY_NAMES[m]: DiffusionHead(latent_dim=d, cond_dim=cfg.emb_dim, width=width,
                                             depth=cfg.head.depth, mlp_ratio=cfg.head.mlp_ratio,
                                             dtype=dt, rngs=rngs, norm_scale=norm_scale,
                                             init=init)
            for m, d in self.dims.items()})
        # Class-conditional generation: token ids vocab_size + k are class k, vocab_size +
        # num_classes the null class (guidance); they index a label table of their own, which
        # the LM head never predicts (its outputs are the text vocabulary).
        self.vocab_size = cfg.vocab_size
        self.num_classes = cfg.get("num_classes", 0)
        if self.num_classes:
            self.label_embed = param(normal_init(cfg.init_std), rngs.params(),
                                     (self.num_classes + 1, cfg.emb_dim), ("classes", "embed"))

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """[B, L, E] token embeddings; class ids (≥ vocab_size) from the label table."""
        if not self.num_classes:
            return self.embed(tokens)
        is_class = tokens >= self.vocab_size
        x = self.embed(jnp.where(is_class, 0, tokens))
        table = constrain(self.label_embed[...], (None, None))  # gathered, as Embed does
        labels = jnp.take(table, jnp.clip(tokens - self.vocab_size, 0, self.num_classes), axis=0)
        return jnp.where(is_class[..., None], labels.astype(x.dtype), x)

    def embed_inputs(self, tokens: jax.Array, modality: jax.Array | None,
                     latents: jax.Array | None) -> jax.Array:
        """[B, L, E] input embeddings: tokens, with latent positions replaced by projections."""
        x = self.embed_tokens(tokens)
        if modality is None or latents is None:
            return x
        for m, d in self.dims.items():
            proj = self.latent_in[MODALITY_NAMES[m]](latents[..., :d])
            x = jnp.where((modality == m)[..., None], proj.astype(x.dtype), x)
        return constrain(x, ("batch", "length", "act_embed"))

    def hidden(self, batch: dict[str, jax.Array]) -> jax.Array:
        x = self.embed_inputs(batch["tokens"], batch.get("modality"), batch.get("latents"))
        return self.decoder(x, batch["positions"], batch["segment_ids"])

    def head(self, modality: int):
        return self.heads[MODALITY_NAMES[modality]]
