"""Training sequences (documents) built from one example: the tasks of DATASET.md "Sequences".

=================  ===========================================================================
task               document (``z…``: N ``<latent>`` positions carrying the span's latents)
=================  ===========================================================================
``text_to_image``  ``<bos> caption <boi> z… <eoi> <eos>``
``image_to_text``  ``<bos> <boi> z… <eoi> caption <eos>``
``text_to_audio``  ``<bos> caption <boa> z… <eoa> <eos>``
``audio_to_text``  ``<bos> <boa> z… <eoa> caption <eos>``
``text``           ``<bos> caption <eos>`` (the image or the audio caption, drawn)
``interleaved``    ``<bos> caption <boX> z… <eoX> caption <boX> z… <eoX> … <eos>`` from 2..k
                   examples (this one and k-1 drawn from the source), image or audio each,
                   fewer when the next one would make the document longer than ``max_len``
                   or take a modality's latent targets above ``target_budget``
=================  ===========================================================================

For classifier-free guidance, ``text_to_image`` / ``text_to_audio`` drop the caption with
probability ``cond_drop`` (``<bos> <boi> z… <eoi> <eos>``, the sampler's unconditional prompt).

Which task a stream position gets, the caption drop and the interleaved partners are drawn from
``np.random.default_rng((seed, index))`` where ``index`` is the position in the global (all
processes) shuffled stream, so a document does not depend on the process count. Latents come from
injected callables ``encode_image(uint8[H, W, 3]) -> float[N, D]`` and
``encode_audio(float32[T]) -> float[M, D]`` (normalised latents; the VAE provides them), or are
taken as they are from pre-encoded examples. The ``text`` task never calls an encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from latentlm_jax.config.task_weights import TASKS, parse_task_weights
from latentlm_jax.data.bad_input import BadInput, BadInputPolicy
from latentlm_jax.data.latent_noise import LatentNoise
from latentlm_jax.data.packing import Document
from latentlm_jax.data.tokenizer import Tokenizer
from latentlm_jax.modality import AUDIO, IMAGE, delimiter_ids

_NEEDS = {  # task -> modalities it needs an encoder (or pre-encoded latents) for
    "text_to_image": (IMAGE,), "image_to_text": (IMAGE,),
    "text_to_audio": (AUDIO,), "audio_to_text": (AUDIO,),
    "text": (), "interleaved": (IMAGE, AUDIO),
}

Encoder = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Pair:
    """One caption with its image or audio (raw ``media`` or pre-encoded ``latents``)."""

    modality: int
    caption: str | None
    media: Any = None
    latents: np.ndarray | None = None
    # a pre-encoded record's source and "index" field: what its σ-VAE noise draw is keyed by
    source: str = ""
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class Example:
    """An example seen through what the tasks need: texts for ``text``, pairs for the rest."""

    texts: tuple[str, ...]
    pairs: tuple[Pair, ...]
    source: str = ""


def to_example(raw: Mapping[str, Any]) -> Example:
    """Normalises the examples of the built-in data, the manifest/TFDS sources and pre-encoded
    latent records (docs/data_sources.md) to an :class:`Example`."""
    source = str(raw.get("source", ""))
    if "image_caption" in raw:  # shapes & tones
        return Example(
            texts=(raw["image_caption"], raw["audio_caption"]),
            pairs=(Pair(IMAGE, raw["image_caption"], media=raw["image"]),
                   Pair(AUDIO, raw["audio_caption"], media=raw["audio"])),
            source=source,
        )
    if "latents" in raw:  # a pre-encoded record
        modality = {"image": IMAGE, "audio": AUDIO}.get(raw.get("modality"))
        if modality is None:
            raise BadInput("bad_field", f"modality must be image or audio, got "
                                        f"{raw.get('modality')!r}", where=source)
        caption = raw.get("caption") or None
        return Example(texts=(caption,) if caption else (),
                       pairs=(Pair(modality, caption, latents=raw["latents"], source=source,
                                   index=raw.get("index")),), source=source)
    text = raw.get("text") or None
    pairs = tuple(Pair(m, text, media=raw[k]) for m, k in ((IMAGE, "image"), (AUDIO, "audio"))
                  if raw.get(k) is not None)
    return Example(texts=(text,) if text else (), pairs=pairs, source=source)


class SequenceBuilder:
    """``builder(index, raw_example) -> Document`` (a ``MapDataset.map_with_index`` function).

    ``weights``: task weights (see :func:`parse_task_weights`); ``None`` = all tasks, minus those
    whose encoder is missing. ``lookup(i)`` / ``lookup_len``: random access to more raw examples
    for ``interleaved``. ``policy``: bad examples (no feasible task, an encoder error) are handed
    to it (skip -> ``None``) instead of raised. ``max_len``: an ``interleaved`` document stops
    taking partners before it would exceed this length (``data.seq_len``). ``target_budget``
    ``{modality: slots}``: likewise before a modality's latent targets (one per latent) would
    exceed its slots (the diffusion head's, ``data/target_capacity.target_budget``).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        weights: str | Mapping[str, float] | None = None,
        encode_image: Encoder | None = None,
        encode_audio: Encoder | None = None,
        cond_drop: float = 0.1,
        max_interleaved: int = 3,
        lookup: Callable[[int], Mapping[str, Any]] | None = None,
        lookup_len: int = 0,
        seed: int = 0,
        policy: BadInputPolicy | None = None,
        max_len: int | None = None,
        target_budget: Mapping[int, int] | None = None,
        pre_encoded: bool = False,
        latent_noise: LatentNoise | None = None,
    ):
        """``pre_encoded``: the examples carry their own latents (``data.source="latents"``), so
        no task needs an encoder. ``latent_noise``: draws the σ-VAE noise onto stored μ each time
        a span is made (``data.latent_noise``; data/latent_noise.py)."""
        self.tok = tokenizer
        self.encoders = {IMAGE: encode_image, AUDIO: encode_audio}
        self.weights = parse_task_weights(weights)
        for task, mods in ({} if pre_encoded else _NEEDS).items():
            if self.weights[task] > 0 and mods and not any(self.encoders[m] for m in mods):
                if weights:  # asked for explicitly
                    raise ValueError(f"task {task!r} needs an encoder for "
                                     f"{' or '.join(('', 'image', 'audio')[m] for m in mods)}")
                self.weights[task] = 0.0
        if lookup is None or lookup_len <= 0:
            self.weights["interleaved"] = 0.0
        if not any(self.weights.values()):
            raise ValueError("every task has weight 0")
        if not 0.0 <= cond_drop <= 1.0:
            raise ValueError(f"cond_drop must be in [0, 1], got {cond_drop}")
        if max_interleaved < 2:
            raise ValueError(f"max_interleaved must be ≥ 2, got {max_interleaved}")
        self.cond_drop = cond_drop
        self.max_interleaved = max_interleaved
        self.lookup = lookup
        self.lookup_len = lookup_len
        self.seed = seed
        self.policy = policy
        self.max_len = max_len
        self.target_budget = dict(target_budget or {})
        self.latent_noise = latent_noise

    def __call__(self, index: int, raw: Mapping[str, Any] | None) -> Document | None:
        if raw is None:  # skipped upstream
            return None
        rng = np.random.default_rng((self.seed, int(index)))
        noise_rng = None if self.latent_noise is None else self.latent_noise.document_rng(index)
        try:
            example = to_example(raw)
            return self.build(self.choose(example, rng), example, rng, noise_rng)
        except BadInput as exc:
            if self.policy is None:
                raise
            return self.policy.handle(exc, exc.where or str(raw.get("source", "")))

    # ------------------------------------------------------------------ task choice
    def _usable(self, pair: Pair) -> bool:
        return pair.latents is not None or self.encoders[pair.modality] is not None

    def feasible(self, task: str, example: Example) -> bool:
        if task == "text":
            return bool(example.texts)
        if task == "interleaved":
            return any(self._usable(p) for p in example.pairs)
        modality = IMAGE if "image" in task else AUDIO
        needs_caption = task.endswith("_to_text")
        return any(p.modality == modality and self._usable(p) and (p.caption or not needs_caption)
                   for p in example.pairs)

    def choose(self, example: Example, rng: np.random.Generator) -> str:
        w = np.array([self.weights[t] if self.feasible(t, example) else 0.0 for t in TASKS])
        if not w.sum() > 0:
            raise BadInput("no_task", "no task with positive weight fits this example "
                                      f"(texts: {len(example.texts)}, pairs: "
                                      f"{[p.modality for p in example.pairs]})",
                           where=example.source)
        return TASKS[int(rng.choice(len(TASKS), p=w / w.sum()))]

    # ------------------------------------------------------------------ layouts
    def _span(self, pair: Pair, noise_rng: np.random.Generator | None = None
              ) -> tuple[list[int], np.ndarray]:
        """``<boX> <latent>*n <eoX>`` and the ``[n, d]`` latents (stored μ with the σ-VAE noise
        drawn onto it from ``noise_rng`` when ``latent_noise`` is set)."""
        z = pair.latents
        if z is not None and self.latent_noise is not None:
            z = self.latent_noise(pair.modality, z, pair.source, pair.index, noise_rng)
        if z is None:
            z = self.encoders[pair.modality](pair.media)
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[0] == 0:
            raise BadInput("bad_field", f"latents must be [n>0, d], got shape {z.shape}")
        t = self.tok
        begin, end = delimiter_ids(pair.modality)
        return [begin, *([t.latent_id] * z.shape[0]), end], z

    def _pick(self, example: Example, rng: np.random.Generator, modality: int | None = None,
              with_caption: bool = False) -> Pair:
        pairs = [p for p in example.pairs if self._usable(p)
                 and (modality is None or p.modality == modality)
                 and (p.caption or not with_caption)]
        return pairs[int(rng.integers(len(pairs)))]

    def build(self, task: str, example: Example, rng: np.random.Generator,
              noise_rng: np.random.Generator | None = None) -> Document:
        """The document of ``task`` for ``example`` (the task must be feasible); ``noise_rng``:
        the fresh latent noise of its spans, drawn in span order."""
        t = self.tok
        if task == "text":
            text = example.texts[int(rng.integers(len(example.texts)))]
            return Document(np.array([t.bos_id, *t.encode(text), t.eos_id], np.int32),
                            source=example.source)
        if task == "interleaved":
            return self._interleaved(example, rng, noise_rng)
        modality = IMAGE if "image" in task else AUDIO
        if task.startswith("text_to_"):
            pair = self._pick(example, rng, modality)
            span, z = self._span(pair, noise_rng)
            drop = rng.random() < self.cond_drop
            caption = [] if drop or not pair.caption else t.encode(pair.caption)
            ids = [t.bos_id, *caption, *span, t.eos_id]
        else:
            pair = self._pick(example, rng, modality, with_caption=True)
            span, z = self._span(pair, noise_rng)
            ids = [t.bos_id, *span, *t.encode(pair.caption), t.eos_id]
        return Document(np.array(ids, np.int32), (z,), (modality,), source=example.source)

    def _interleaved(self, example: Example, rng: np.random.Generator,
                     noise_rng: np.random.Generator | None = None) -> Document:
        t = self.tok
        k = int(rng.integers(2, self.max_interleaved + 1))
        examples = [example]
        for _ in range(8 * k):  # partners are drawn until k examples have a usable pair
            if len(examples) == k:
                break
            try:
                raw = self.lookup(int(rng.integers(self.lookup_len)))
                if raw is None:
                    continue
                other = to_example(raw)
            except BadInput:
                continue  # a bad partner does not spoil this example
            if any(self._usable(p) for p in other.pairs):
                examples.append(other)
        ids, latents, modalities = [t.bos_id], [], []
        for ex in examples:
            pair = self._pick(ex, rng)
            span, z = self._span(pair, noise_rng)
            part = [*(t.encode(pair.caption) if pair.caption else []), *span]
            if latents and self.max_len and len(ids) + len(part) + 1 > self.max_len:
                break  # partners that would not fit in a row are left out
            slots = self.target_budget.get(pair.modality)
            taken = sum(len(x) for x, m in zip(latents, modalities, strict=True)
                        if m == pair.modality)
            if latents and slots is not None and taken + len(z) > slots:
                break  # nor those whose targets would not fit the diffusion head's slots
            ids += part
            latents.append(z)
            modalities.append(pair.modality)
        ids.append(t.eos_id)
        return Document(np.array(ids, np.int32), tuple(latents), tuple(modalities),
                        source=example.source)
