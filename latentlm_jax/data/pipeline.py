"""The Grain training pipeline: source → shuffle → repeat → documents → shard → pack → batch →
prefetch, yielding per-process batches in the format of docs/batch_format.md.

Built with Grain's Dataset API (``grain.MapDataset`` → ``.to_iter_dataset()`` → our packing
``IterDataset``), see docs/data.md for why. The iterator ``build_train_iterator`` returns is a
``grain.DatasetIterator``: ``get_state()`` is a small JSON-serialisable dict, ``set_state(state)``
resumes exactly, and it works with ``grain.checkpoint.CheckpointSave/CheckpointRestore`` and with
the trainer's own Orbax handler (``latentlm_jax.train.data_checkpoint``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import grain
import jax
import ml_collections as mlc
import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.data_sources import ALL_SOURCES, TEXT_SOURCES
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.bad_input import (
    BadInput,
    BadInputPolicy,
    SkippingSource,
    attach_skip_counts,
)
from latentlm_jax.data.latent_noise import latent_noise_for
from latentlm_jax.data.media import DEFAULT_IMAGE_CROP
from latentlm_jax.data.packing import (
    Document,
    DocumentTooLong,
    DocumentTooManyTargets,
    RowPacker,
)
from latentlm_jax.data.sequences import Encoder, SequenceBuilder
from latentlm_jax.data.target_capacity import target_budget
from latentlm_jax.data.tokenizer import Tokenizer, make_tokenizer
from latentlm_jax.modality import (
    AUDIO,
    IMAGE,
    LATENT_DIM_FIELDS,
    MODALITY_NAMES,
    latent_dims,
    max_latent_dim,
)

# Documents read ahead by the threads of ``to_iter_dataset`` (per process, or per Grain worker).
READ_THREADS = 2
READ_BUFFER = 256


# ---------------------------------------------------------------------------- documents
class TextDocuments:
    """``{"text": str, ...}`` → ``<bos> text <eos>``; no latent work at all."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer

    def __call__(self, index: int, example: Mapping[str, Any] | None) -> Document | None:
        del index
        if example is None:  # skipped by the source
            return None
        t = self.tok
        ids = np.array([t.bos_id, *t.encode(example["text"]), t.eos_id], np.int32)
        return Document(ids, source=str(example.get("source", "")))


# The config field to blame when a source cannot be opened.
_SOURCE_FIELDS = {"text_files": "data.text_files", "manifest": "data.manifest",
                  "tfds": "data.tfds_name", "latents": "data.latent_files"}


def make_source(config: mlc.ConfigDict, only: str | None = None):
    """The random-access source ``config.data.source`` names. ``only`` (``"image"`` /
    ``"audio"``): a manifest / TFDS source reads that field alone and reports examples without it
    as ``missing_keys`` (what a σ-VAE reads). A source that cannot be opened (a missing manifest,
    an unprepared TFDS dataset, ...) is a :class:`ConfigError` naming the field."""
    d = config.data
    try:
        return _open_source(d, only)
    except ConfigError:
        raise
    except (OSError, ValueError, NotImplementedError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(_SOURCE_FIELDS.get(d.source, "data.source"),
                          f"cannot open data.source={d.source!r}: {first_line}") from e


def _open_source(d: mlc.ConfigDict, only: str | None):
    if d.source == "synthetic":
        raise ConfigError("data.source", "'synthetic' is a fixed random batch that only "
                                         "`latentlm bench train` reads; training and the other "
                                         "commands need real data")
    if d.source == "shapes_tones_captions":
        from latentlm_jax.data.sources import CaptionSource

        return CaptionSource(split=d.split)
    if d.source == "text_files":
        from latentlm_jax.data.sources import TextFileSource

        if not d.text_files:
            raise ValueError("data.text_files is empty (data.source='text_files')")
        return TextFileSource(tuple(d.text_files))
    if d.source == "shapes_tones":
        from latentlm_jax.data.sources import ShapesTonesSource

        return ShapesTonesSource(split=d.split)
    if d.source == "manifest":
        from latentlm_jax.data.manifest import ManifestSource

        return ManifestSource(d.manifest, image_resolution=d.image_resolution,
                              sample_rate=d.sample_rate, num_samples=d.audio_samples,
                              max_image_pixels=d.max_image_pixels, only=only,
                              label=d.get("label", ""),
                              image_crop=d.get("image_crop", DEFAULT_IMAGE_CROP))
    if d.source == "tfds":
        from latentlm_jax.data.tfds_source import TfdsSource

        return TfdsSource(d.tfds_name, d.tfds_split, d.tfds_data_dir or None, d.tfds_feature_map,
                          image_resolution=d.image_resolution, sample_rate=d.sample_rate,
                          num_samples=d.audio_samples,
                          source_sample_rate=d.tfds_sample_rate or None,
                          max_image_pixels=d.max_image_pixels, only=only,
                          label=d.get("label", ""),
                          image_crop=d.get("image_crop", DEFAULT_IMAGE_CROP))
    if d.source == "latents":
        from latentlm_jax.data.array_record_source import LatentArrayRecordSource

        return LatentArrayRecordSource(tuple(d.latent_files))
    raise ConfigError("data.source", f"must be one of {', '.join(ALL_SOURCES)}; "
                                     f"got {d.source!r}")


def _resolve_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    return index, count


def build_document_dataset(
    config: mlc.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    tokenizer: Tokenizer | None = None,
    policy: BadInputPolicy | None = None,
    encode_image: Encoder | None = None,
    encode_audio: Encoder | None = None,
    source: Any = None,
) -> grain.MapDataset:
    """This process's infinite stream of documents (``None`` where an example was skipped).

    Element ``k`` of process ``p`` of ``P`` is element ``k·P + p`` of the one-process stream:
    the documents are made from the *global* stream index before the stream is sharded (lazily:
    a process only ever reads and tokenizes its own elements).
    """
    d = config.data
    process_index, process_count = _resolve_shard(process_index, process_count)
    tokenizer = make_tokenizer(d) if tokenizer is None else tokenizer
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but model.vocab_size="
                         f"{config.model.vocab_size}")
    policy = BadInputPolicy(d.bad_input) if policy is None else policy
    source = make_source(config) if source is None else source
    if len(source) == 0:
        raise ValueError(f"data.source={d.source!r} has no examples")

    ds = grain.MapDataset.source(SkippingSource(source, policy))
    if d.shuffle:
        ds = ds.shuffle(seed=d.seed)  # a fresh permutation per epoch (grain reseeds by epoch)
    ds = ds.repeat(None)
    if d.get("label", ""):  # class-conditional: [<class k>] z₁ … z_N (docs/class_conditional.md)
        from latentlm_jax.data.class_sequences import ClassSequenceBuilder

        if d.source != "latents" and encode_image is None:
            raise ValueError(f"data.label with data.source={d.source!r} needs encode_image (the "
                             "image VAE's normalised encoder) passed to build_train_iterator")
        make_doc = ClassSequenceBuilder(
            tokenizer, vocab_size=config.model.vocab_size, num_classes=config.model.num_classes,
            cond_drop=float(d.cond_drop), seed=d.seed, policy=policy, encode_image=encode_image,
            pre_encoded=d.source == "latents", latent_noise=latent_noise_for(d, source))
    elif d.source in TEXT_SOURCES:
        make_doc = TextDocuments(tokenizer)
    else:
        weights = d.get("task_weights", "") or None
        if max_latent_dim(config.model) == 0:
            weights, encode_image, encode_audio = {"text": 1.0}, None, None
        elif d.source != "latents":
            encoders = {IMAGE: encode_image, AUDIO: encode_audio}
            for m, dim in latent_dims(config.model).items():
                if encoders[m] is None:
                    name = MODALITY_NAMES[m]
                    raise ValueError(
                        f"model.{LATENT_DIM_FIELDS[m]}={dim} with data.source={d.source!r} needs "
                        f"encode_{name} (the {name} VAE's normalised encoder) passed to "
                        "build_train_iterator")
        make_doc = SequenceBuilder(
            tokenizer, weights=weights, encode_image=encode_image, encode_audio=encode_audio,
            cond_drop=float(d.get("cond_drop", 0.1)),
            max_interleaved=int(d.get("max_interleaved", 3)),
            lookup=source.__getitem__, lookup_len=len(source),
            seed=d.seed, policy=policy, max_len=d.seq_len, pre_encoded=d.source == "latents",
            target_budget=target_budget(config), latent_noise=latent_noise_for(d, source))
    ds = ds.map_with_index(make_doc)
    return ds[process_index::process_count]


# ---------------------------------------------------------------------------- packing
class PackIterDataset(grain.IterDataset):
    """Greedy packing of a document stream into rows (dicts of ``[seq_len]`` arrays).

    A document that can never fit (longer than ``seq_len``; more latent targets of a modality than
    ``target_budget`` gives it) goes to ``policy`` as ``BadInput("too_long")``
    (``"too_many_targets"``): skipped and counted, or a ``DataError``.
    """

    def __init__(self, parent: grain.IterDataset, seq_len: int, *, latent_id: int,
                 latent_dim: int = 0, policy: BadInputPolicy | None = None,
                 target_budget: Mapping[int, int] | None = None):
        super().__init__(parent)
        self.seq_len = seq_len
        self.latent_id = latent_id
        self.latent_dim = latent_dim
        self.target_budget = dict(target_budget) if target_budget else None
        self.policy = BadInputPolicy("error") if policy is None else policy

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self.seq_len}, latent_dim={self.latent_dim})"


class _PackIterator(grain.DatasetIterator):
    """State = the parent's state just before the first document of the next row.

    After a row is returned, at most one document (the one that did not fit) is held; the state
    then points at that document, so ``set_state`` simply rewinds the parent and rereads it.
    """

    def __init__(self, parent: grain.DatasetIterator, spec: PackIterDataset):
        super().__init__(parent)
        self._spec = spec
        self._packer = RowPacker(spec.seq_len, latent_id=spec.latent_id,
                                 latent_dim=spec.latent_dim, target_budget=spec.target_budget)
        self._carry: Document | None = None
        self._carry_state: Any = None

    def __next__(self) -> dict[str, np.ndarray]:
        packer, spec = self._packer, self._spec
        if self._carry is not None:
            packer.add(self._carry)  # fits: it was checked and the row is empty
            self._carry = self._carry_state = None
        while packer.used < spec.seq_len:
            before = self._parent.get_state()
            try:
                doc = next(self._parent)
            except StopIteration:
                if packer.used:
                    break
                raise
            if doc is None:
                continue
            try:
                packer.check(doc)
            except DocumentTooLong as exc:
                detail = f"document of {exc.length} elements; seq_len is {exc.seq_len}"
                spec.policy.handle(BadInput("too_long", detail, where=doc.source))
                continue
            except DocumentTooManyTargets as exc:
                detail = (f"{exc.targets} {MODALITY_NAMES[exc.modality]} latent targets; the "
                          f"diffusion head has {exc.slots} slots per row "
                          "(model.diffusion.target_fraction)")
                spec.policy.handle(BadInput("too_many_targets", detail, where=doc.source))
                continue
            if not packer.add(doc):
                self._carry, self._carry_state = doc, before
                break
        return packer.flush()

    def get_state(self) -> dict[str, Any]:
        parent = self._carry_state if self._carry is not None else self._parent.get_state()
        return {"parent": copy.deepcopy(parent)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(copy.deepcopy(state["parent"]))
        self._packer.flush()
        self._carry = self._carry_state = None

    def __str__(self) -> str:
        return f"PackIterator(seq_len={self._spec.seq_len})"


class _AttachSkipCounts(grain.transforms.Map):
    def __init__(self, policy: BadInputPolicy):
        self.policy = policy

    def map(self, batch: dict[str, Any]) -> dict[str, Any]:
        return attach_skip_counts(batch, self.policy)


# ---------------------------------------------------------------------------- the pipeline
def rows_per_process(config: mlc.ConfigDict, process_count: int) -> int:
    b = config.train.global_batch_size
    if b % process_count:
        raise ValueError(f"train.global_batch_size={b} is not divisible by the "
                         f"{process_count} JAX processes")
    return b // process_count


def build_train_dataset(
    config: mlc.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    encode_image: Encoder | None = None,
    encode_audio: Encoder | None = None,
    tokenizer: Tokenizer | None = None,
) -> grain.IterDataset:
    """The per-process batch stream as a ``grain.IterDataset`` (:func:`build_train_iterator`)."""
    d = config.data
    process_index, process_count = _resolve_shard(process_index, process_count)
    tokenizer = make_tokenizer(d) if tokenizer is None else tokenizer
    policy = BadInputPolicy(d.bad_input)
    docs = build_document_dataset(
        config, process_index=process_index, process_count=process_count, tokenizer=tokenizer,
        policy=policy, encode_image=encode_image, encode_audio=encode_audio)
    ds = docs.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                prefetch_buffer_size=READ_BUFFER))
    ds = PackIterDataset(ds, d.seq_len, latent_id=tokenizer.latent_id,
                         latent_dim=max_latent_dim(config.model), policy=policy,
                         target_budget=target_budget(config))
    ds = ds.batch(rows_per_process(config, process_count), drop_remainder=True)
    ds = ds.map(_AttachSkipCounts(policy))
    if d.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=d.num_workers, per_worker_buffer_size=d.prefetch))
    elif d.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=d.prefetch)
    return ds


def build_train_iterator(
    config: mlc.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    encode_image: Encoder | None = None,
    encode_audio: Encoder | None = None,
) -> grain.DatasetIterator:
    """An endless iterator of this process's batches: dicts of NumPy arrays with leading shape
    ``[global_batch_size / process_count, seq_len]`` (keys of docs/batch_format.md; the latent
    keys when the model has a latent modality) plus ``"_skipped_counts"`` (a dict, see
    ``bad_input.pop_skip_counts``). ``get_state()`` / ``set_state()`` save and resume it.

    ``encode_image`` / ``encode_audio`` turn raw media into normalised latents for the
    multimodal sources (``shapes_tones``, ``manifest``, ``tfds``).
    """
    if config.data.num_workers > 0:
        _mark_absl_flags_parsed()
    ds = build_train_dataset(config, process_index=process_index, process_count=process_count,
                             encode_image=encode_image, encode_audio=encode_audio)
    return iter(ds)


def _mark_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; entry points without absl must mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ---------------------------------------------------------------------------- held-out rows
# The eval set's shuffle and task draws use this seed, not data.seed: every run of a sweep
# evaluates on the same documents.
EVAL_SEED = 0


def eval_data_config(config: mlc.ConfigDict) -> mlc.ConfigDict:
    """A copy of ``config`` whose data section reads the held-out data instead of the training
    data (docs/evaluation.md): the built-in data's ``data.eval_split`` ("" = ``"test"``), TFDS's
    ``data.eval_split``, or ``data.eval_text_files`` / ``eval_manifest`` / ``eval_latent_files``
    (``eval_latents_dir``). No held-out data for the source is a :class:`ConfigError`."""
    from latentlm_jax.config.validate import EVAL_FIELDS, check_eval_data

    if config.data.source not in EVAL_FIELDS:
        raise ConfigError("data.source", f"must be one of {', '.join(ALL_SOURCES)}; "
                                         f"got {config.data.source!r}")
    with config.unlocked():
        out = copy.deepcopy(config)
    out.train.eval_every = max(int(out.train.eval_every), 1)  # check as if evaluating
    check_eval_data(out)
    d = out.data
    d.shuffle, d.seed, d.num_workers = True, EVAL_SEED, 0
    if d.source in ("shapes_tones_captions", "shapes_tones"):
        d.split = d.eval_split or "test"
    elif d.source == "tfds":
        d.tfds_split = d.eval_split
    elif d.source == "text_files":
        d.text_files = tuple(d.eval_text_files)
    elif d.source == "manifest":
        d.manifest = d.eval_manifest
    elif d.source == "latents":
        d.latent_files = tuple(d.eval_latent_files) or _latents_dir_shards(out)
    return out


def _latents_dir_shards(config: mlc.ConfigDict) -> tuple[str, ...]:
    """The shards of ``data.eval_latents_dir`` for the model's latent modalities."""
    from latentlm_jax.data.latents_dir import read_descriptor

    root = paths.as_str(config.data.eval_latents_dir)
    try:
        entries = read_descriptor(root)["modalities"]
    except ConfigError as e:
        raise ConfigError("data.eval_latents_dir", e.problem) from e
    files = []
    for m, dim in latent_dims(config.model).items():
        entry = entries.get(MODALITY_NAMES[m])
        if entry is None or int(entry["latent_dim"]) != dim:
            raise ConfigError("data.eval_latents_dir", f"{root} has no {MODALITY_NAMES[m]} "
                                                       f"latents of dim {dim}")
        files.extend(str(paths.join(root, s)) for s in entry["shards"])
    return tuple(files)


def build_eval_rows(
    config: mlc.ConfigDict,
    *,
    encode_image: Encoder | None = None,
    encode_audio: Encoder | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The held-out set as packed rows: the documents of the first ``data.eval_examples``
    elements of the held-out source (shuffled with :data:`EVAL_SEED`; fewer when the source is
    shorter; bad, too-long or over-budget examples skipped), packed greedily in order (to the
    training rows' target budget) into ``[R, seq_len]`` arrays (docs/batch_format.md). Also
    returns ``doc_ids`` ``[R, seq_len]`` int32: each position's document number in that order
    (-1 on padding), which fixes the eval noise draws independently of packing. Every process
    builds the same rows."""
    eval_config = eval_data_config(config)
    d = eval_config.data
    tokenizer = make_tokenizer(d)
    policy = BadInputPolicy("skip")
    try:
        source = make_source(eval_config)
    except ConfigError as e:  # name the held-out field, not the training one
        from latentlm_jax.config.validate import EVAL_FIELDS

        field = EVAL_FIELDS[d.source]
        if d.source == "latents" and not config.data.eval_latent_files:
            field = "eval_latents_dir"
        raise ConfigError(f"data.{field}", e.problem) from e
    docs_ds = build_document_dataset(
        eval_config, process_index=0, process_count=1, tokenizer=tokenizer, policy=policy,
        encode_image=encode_image, encode_audio=encode_audio, source=source)
    packer = RowPacker(d.seq_len, latent_id=tokenizer.latent_id,
                       latent_dim=max_latent_dim(config.model),
                       target_budget=target_budget(config))
    rows, row_docs, docs_in_row, kept = [], [], [], 0
    for i in range(min(int(d.eval_examples), len(source))):
        doc = docs_ds[i]
        if doc is None:
            continue
        try:
            packer.check(doc)
        except (DocumentTooLong, DocumentTooManyTargets):
            continue
        if not packer.add(doc):
            rows.append(packer.flush())
            row_docs.append(docs_in_row)
            docs_in_row = []
            packer.add(doc)
        docs_in_row.append(kept)
        kept += 1
    if packer.used:
        rows.append(packer.flush())
        row_docs.append(docs_in_row)
    if not rows:
        raise ValueError(f"the held-out data of data.source={d.source!r} gave no usable document")
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    lookup = np.full((len(rows), d.seq_len + 1), -1, np.int32)  # segment s → document number
    for r, ids in enumerate(row_docs):
        lookup[r, 1:len(ids) + 1] = ids
    doc_ids = np.take_along_axis(lookup, batch["segment_ids"], axis=1)
    return batch, doc_ids
