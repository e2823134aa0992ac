"""The one home of the modality facts: ids, names, latent-dim config fields, delimiter tokens.

A leaf module (it imports nothing from the package), so the model, the data pipeline, the
generator, the demo and the CLI all read the same table. A new continuous modality is added here
first: an id, a name, its ``model.<name>_latent_dim`` field, its σ-VAE task and its span tokens.
"""

from __future__ import annotations

from typing import Any

# Element kinds of a packed row (``batch["modality"]``): 0 is a text token, the rest are latents.
TEXT, IMAGE, AUDIO = 0, 1, 2
LATENT_MODALITIES = (IMAGE, AUDIO)

MODALITY_NAMES = {IMAGE: "image", AUDIO: "audio"}
MODALITY_IDS = {name: m for m, name in MODALITY_NAMES.items()}
# model.<field> that sets (and switches on, when > 0) each modality's latent width.
LATENT_DIM_FIELDS = {IMAGE: "image_latent_dim", AUDIO: "audio_latent_dim"}
# The σ-VAE training task (config.task) that makes each modality's latents.
VAE_TASKS = {IMAGE: "vae_image", AUDIO: "vae_audio"}

# Special tokens at ids 0..7, the same for every tokenizer (latentlm_jax/data/tokenizer.py).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<latent>")
# (begin, end) tokens around each modality's span of latents.
DELIMITERS = {IMAGE: ("<boi>", "<eoi>"), AUDIO: ("<boa>", "<eoa>")}


def delimiter_ids(modality: int) -> tuple[int, int]:
    """(begin, end) token ids of ``modality``'s span."""
    begin, end = DELIMITERS[modality]
    return SPECIAL_TOKENS.index(begin), SPECIAL_TOKENS.index(end)


def latent_dims(model_cfg: Any) -> dict[int, int]:
    """Enabled continuous modalities → latent dim (``model_cfg`` is ``config.model``)."""
    dims = {m: int(model_cfg[field]) for m, field in LATENT_DIM_FIELDS.items()}
    return {m: d for m, d in dims.items() if d > 0}


def is_multimodal(config: Any) -> bool:
    """Whether ``config`` trains a LatentLM (any latent modality on) rather than a text LM."""
    return bool(latent_dims(config.model))


def max_latent_dim(model_cfg: Any) -> int:
    """Width of a packed row's ``latents`` field: the largest enabled latent dim (0 = text only)."""
    return max(latent_dims(model_cfg).values(), default=0)
