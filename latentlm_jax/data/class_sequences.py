"""Class-conditional documents as in the authors' ImageNet code (docs/class_conditional.md).

One example with an image and a class label ``k`` becomes ``[<class k>] z₁ … z_N``: no ``<bos>``,
no ``<boi>`` / ``<eoi>``, no text. As in the authors' ``Transformer.forward_parallel``, the label
embedding takes the first position and position i predicts latent i+1 (our packer puts each
latent's diffusion target at the position before it), so the class position predicts z₁ and
z_{N-1} predicts z_N; z_N's own position predicts nothing. The class token is the id
``vocab_size + k``; with probability ``cond_drop`` it is the null class ``vocab_size +
num_classes`` (the authors' ``LabelEmbedder.token_drop``), the unconditional stream of
classifier-free guidance. The model embeds those ids from its label table
(``models/latentlm.py``).

The drop is drawn from ``np.random.default_rng((seed, index))`` with ``index`` the position in the
global shuffled stream, as for :class:`~latentlm_jax.data.sequences.SequenceBuilder`. A label
that is missing, not an integer or outside ``[0, num_classes)`` is bad input (``bad_field``:
skipped and counted, or an error under ``data.bad_input=error``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from latentlm_jax.data.bad_input import BadInput, BadInputPolicy
from latentlm_jax.data.packing import Document
from latentlm_jax.data.sequences import Encoder, SequenceBuilder, to_example
from latentlm_jax.data.tokenizer import Tokenizer
from latentlm_jax.modality import IMAGE

# The field every labelled source gives its examples (data.label names the field it is read from).
LABEL_KEY = "label"


def class_token(label: int, vocab_size: int) -> int:
    """The token id of class ``label`` (the null class is ``label = num_classes``)."""
    return vocab_size + int(label)


def check_label(value: Any, num_classes: int) -> int:
    """An int label in ``[0, num_classes)`` or :class:`BadInput` ``bad_field``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput("bad_field", f"class label must be an integer, got {value!r}")
    if not 0 <= value < num_classes:
        raise BadInput("bad_field", f"class label {value} is outside [0, {num_classes}) "
                                    f"(model.num_classes={num_classes})")
    return value


class ClassSequenceBuilder:
    """``builder(index, raw_example) -> Document`` for ``data.label`` runs (see module doc)."""

    def __init__(self, tokenizer: Tokenizer, *, vocab_size: int, num_classes: int,
                 cond_drop: float = 0.1, seed: int = 0, policy: BadInputPolicy | None = None,
                 encode_image: Encoder | None = None, pre_encoded: bool = False,
                 latent_noise: Any = None):
        """``latent_noise``: the σ-VAE noise drawn onto stored μ (``data.latent_noise``,
        data/latent_noise.py), as for every other document."""
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= cond_drop <= 1.0:
            raise ValueError(f"cond_drop must be in [0, 1], got {cond_drop}")
        if encode_image is None and not pre_encoded:
            raise ValueError("class-conditional documents need an image encoder (or latents)")
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.cond_drop = cond_drop
        self.seed = seed
        self.policy = policy
        # The image spans are made as the text→image task makes them (one latent path).
        self._spans = SequenceBuilder(tokenizer, weights={"text_to_image": 1.0},
                                      encode_image=encode_image, seed=seed,
                                      pre_encoded=pre_encoded, latent_noise=latent_noise)

    def __call__(self, index: int, raw: Mapping[str, Any] | None) -> Document | None:
        if raw is None:  # skipped upstream
            return None
        rng = np.random.default_rng((self.seed, int(index)))
        noise = self._spans.latent_noise
        noise_rng = None if noise is None else noise.document_rng(index)
        try:
            return self.build(raw, rng, noise_rng)
        except BadInput as exc:
            if self.policy is None:
                raise
            return self.policy.handle(exc, exc.where or str(raw.get("source", "")))

    def build(self, raw: Mapping[str, Any], rng: np.random.Generator,
              noise_rng: np.random.Generator | None = None) -> Document:
        source = str(raw.get("source", ""))
        if raw.get(LABEL_KEY) is None:
            raise BadInput("bad_field", "no class label", where=source)
        try:
            label = check_label(raw[LABEL_KEY], self.num_classes)
        except BadInput as exc:
            exc.where = source
            raise
        example = to_example(raw)
        pairs = [p for p in example.pairs if p.modality == IMAGE]
        if not pairs:
            raise BadInput("bad_field", "a class-conditional example needs an image",
                           where=source)
        _, z = self._spans._span(pairs[0], noise_rng)
        if rng.random() < self.cond_drop:
            label = self.num_classes  # the null class
        n = z.shape[0]
        tokens = np.array([class_token(label, self.vocab_size),
                           *([self._spans.tok.latent_id] * n)], np.int32)
        return Document(tokens, (z,), (IMAGE,), source=example.source)
