"""What a σ-VAE reads: the built-in *shapes & tones* examples, or your own images / audio from a
JSONL manifest or a TFDS dataset (``config.data.source``; docs/vae.md).

A user source is opened to read the σ-VAE's modality alone (``make_source(config, only=...)``):
examples without it — a text-only or audio-only line when training on images — are skipped and
counted (``no_image`` / ``no_audio``: :class:`NotApplicable`, never an error, since they are good
examples for other readers); unusable ones follow ``data.bad_input``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.data_sources import BUILTIN_SOURCES
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import check_vae_data
from latentlm_jax.data.bad_input import BadInput, BadInputPolicy
from latentlm_jax.modality import MODALITY_NAMES, VAE_TASKS

Example = dict[str, Any]


def modality_of(task: str) -> str:
    """``"vae_image"`` → ``"image"``, ``"vae_audio"`` → ``"audio"``."""
    for m, t in VAE_TASKS.items():
        if t == task:
            return MODALITY_NAMES[m]
    raise ConfigError("task", f"{task!r} is not a σ-VAE task ({', '.join(VAE_TASKS.values())})")


def is_builtin(data: mlc.ConfigDict) -> bool:
    """Whether ``data`` (a config's data section) names the built-in data."""
    return data.source in BUILTIN_SOURCES


def describe_data(data: mlc.ConfigDict, builtin_split: str) -> str:
    """A short name of the data, for reports: ``built-in test split``, ``manifest /d/m.jsonl``,
    ``tfds my_data/test``."""
    if is_builtin(data):
        return f"built-in {builtin_split} split"
    if data.source == "manifest":
        return f"manifest {paths.as_str(data.manifest)}"
    return f"tfds {data.tfds_name}/{data.tfds_split}"


def check_builtin_sizes(task: str, vae: mlc.ConfigDict) -> None:
    """The built-in data has 32×32 images and 1 s of 16 kHz audio; a σ-VAE sized otherwise
    cannot read it."""
    from latentlm_jax.data.shapes_tones import AUDIO_SAMPLES, IMAGE_SIZE, SAMPLE_RATE

    if modality_of(task) == "image":
        wanted = [("vae.image.resolution", vae.image.resolution, IMAGE_SIZE)]
    else:
        wanted = [("vae.audio.sample_rate", vae.audio.sample_rate, SAMPLE_RATE),
                  ("vae.audio.num_samples", vae.audio.num_samples, AUDIO_SAMPLES)]
    for field, value, builtin in wanted:
        if value != builtin:
            raise ConfigError(field, f"the built-in data has {builtin}, got {value} (train on "
                                     "your own data with data.source=manifest or tfds)")


def open_examples(task: str, data_config: mlc.ConfigDict, vae: mlc.ConfigDict,
                  builtin_split: str) -> Sequence[Example]:
    """The random-access examples a σ-VAE (``task``, sized by ``vae``) reads from the data
    ``data_config.data`` names; the built-in data's ``builtin_split``. Each example has the
    modality's key; user sources raise :class:`BadInput` for unusable examples."""
    check_vae_data(task, data_config.data, vae)
    if is_builtin(data_config.data):
        from latentlm_jax.data.shapes_tones import ShapesTones

        check_builtin_sizes(task, vae)
        return ShapesTones(split=builtin_split, seed=data_config.data.seed)
    from latentlm_jax.data.pipeline import make_source

    return make_source(data_config, only=modality_of(task))


def first_usable(examples: Sequence[Example], n: int,
                 policy: BadInputPolicy) -> list[tuple[int, Example]]:
    """The first ``n`` usable examples as ``(index, example)``; unusable ones go to ``policy``
    (counted, or a :class:`DataError`). Fewer when the source runs out."""
    out: list[tuple[int, Example]] = []
    for i in range(len(examples)):
        if len(out) == n:
            break
        try:
            out.append((i, examples[i]))
        except BadInput as exc:
            policy.handle(exc, exc.where or f"example:{i}")
    return out
