"""Class-conditional image generation: ``latentlm generate --class-id K [--cfg-scale S]``.

A class prompt is the one token ``<class k>`` (id ``vocab_size + k``, as the training documents
of :mod:`latentlm_jax.data.class_sequences` begin); with guidance, each conditional row has an
unconditional twin whose prompt is the null class (id ``vocab_size + num_classes``), so the pair
differs in the class alone and both advance in one batch, each with its own cache rows (the
authors' ``sample_with_cfg``). The image latents are then decoded as for text → image.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.class_sequences import class_token
from latentlm_jax.generate.generator import Generator, LatentStream, SamplingOptions
from latentlm_jax.generate.prompts import PromptRequest
from latentlm_jax.modality import IMAGE


def parse_class_ids(value: str, num_classes: int | None = None) -> list[int] | None:
    """``"3"`` or ``"3,17,42"`` → class ids (≥ 0); ``"all"`` → every class of the model
    (``None`` while ``num_classes`` is not known); anything else is a one-line error."""
    if value.strip() == "all":
        return None if num_classes is None else list(range(num_classes))
    ids = []
    for item in value.split(","):
        item = item.strip()
        if not item.isdigit():
            raise ConfigError("", f"--class-id takes class ids ≥ 0 (K or K1,K2,...), got "
                                  f"{value!r}")
        ids.append(int(item))
    return ids


def check_class_ids(ids: Sequence[int], num_classes: int, workdir: str) -> None:
    if num_classes <= 0:
        raise ConfigError("", f"{workdir} is not a class-conditional model (model.num_classes=0); "
                              "--class-id needs one trained with data.label")
    bad = [k for k in ids if not 0 <= k < num_classes]
    if bad:
        raise ConfigError("", f"--class-id {bad[0]} is outside [0, {num_classes}) (this model's "
                              "model.num_classes)")


def class_requests(ids: Sequence[int], *, count: int, seed: int) -> list[PromptRequest]:
    """One image request per class id (its prompt reads ``class K``, for the manifest)."""
    return [PromptRequest(index=i, line=0, prompt=f"class {k}", modality="image", count=count,
                          seed=seed) for i, k in enumerate(ids)]


def class_prompt_rows(labels: Sequence[int], *, vocab_size: int, num_classes: int,
                      guided: bool) -> list[list[int]]:
    """The prompt rows: ``[<class k>]`` per label, then (guided) ``[<null>]`` per label."""
    rows = [[class_token(k, vocab_size)] for k in labels]
    if guided:
        rows += [[class_token(num_classes, vocab_size)]] * len(labels)
    return rows


def prefill_classes(gen: Generator, labels: Sequence[int], opts: SamplingOptions
                    ) -> LatentStream:
    """Prefills the class tokens (and the null class's when ``opts.cfg_scale`` ≠ 1)."""
    guided = opts.cfg_scale != 1.0
    rows = class_prompt_rows(labels, vocab_size=gen.cfg.vocab_size,
                             num_classes=gen.cfg.num_classes, guided=guided)
    return gen.prefill_rows(rows, len(labels), guided, gen.image_latents)


def class_to_latents(gen: Generator, labels: Sequence[int], key: jax.Array,
                     opts: SamplingOptions) -> list[np.ndarray]:
    """One image latent sequence [N, D] (normalised space) per class label."""
    return gen.decode_latents(prefill_classes(gen, labels, opts), IMAGE, key, opts)
