"""Packing documents into fixed rows of ``seq_len`` (pure NumPy), as docs/batch_format.md says.

A :class:`Document` is one training sequence: token ids where every latent position holds the
``<latent>`` id, plus one ``[k, d]`` array per modality span (in order) and that span's modality.
:class:`RowPacker` fills rows greedily: a document goes into the current row if it fits, otherwise
the row is closed (padded with zeros) and the document starts the next one. Documents are never
split or truncated: one longer than ``seq_len`` raises :class:`DocumentTooLong` and the caller
decides (``data.bad_input``: skip or error).

An optional per-row *target budget* ``{modality: slots}`` (the diffusion head's gathered slots,
``data/target_capacity.py``) also closes the row before a document would take a modality's latent
targets in it above its slots; a document with more targets than that on its own raises
:class:`DocumentTooManyTargets`. A span of ``k`` latents is ``k`` targets of its modality (the
positions before each latent carry ``latent_mask``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from latentlm_jax.modality import AUDIO, MODALITY_NAMES, TEXT

TEXT_KEYS = ("tokens", "targets", "ce_mask", "segment_ids", "positions")
LATENT_KEYS = ("modality", "latents", "latent_mask", "latent_modality")


@dataclasses.dataclass(frozen=True)
class Document:
    """One training sequence.

    ``tokens``: int ids, ``<latent>`` at every latent position. ``latents[j]``: float ``[k_j, d_j]``
    for the j-th run of latent positions (span order). ``modalities[j]``: IMAGE or AUDIO.
    ``source``: where it came from (for bad-input messages).
    """

    tokens: np.ndarray
    latents: tuple[np.ndarray, ...] = ()
    modalities: tuple[int, ...] = ()
    source: str = ""

    def __len__(self) -> int:
        return int(len(self.tokens))

    def targets(self) -> dict[int, int]:
        """Latent targets per modality: one per latent (``latent_mask`` marks the position
        before each latent)."""
        out: dict[int, int] = {}
        for z, m in zip(self.latents, self.modalities, strict=False):
            out[m] = out.get(m, 0) + (int(np.shape(z)[0]) if np.ndim(z) else 0)
        return out


class DocumentTooLong(ValueError):
    """A document has more elements than a row holds."""

    def __init__(self, length: int, seq_len: int, source: str = ""):
        where = f" ({source})" if source else ""
        super().__init__(f"document of {length} elements does not fit in seq_len={seq_len}{where}")
        self.length = length
        self.seq_len = seq_len
        self.source = source


class DocumentTooManyTargets(ValueError):
    """A document has more latent targets of a modality than the row's target budget."""

    def __init__(self, modality: int, targets: int, slots: int, source: str = ""):
        where = f" ({source})" if source else ""
        super().__init__(f"document of {targets} {MODALITY_NAMES[modality]} latent targets does "
                         f"not fit the diffusion head's {slots} slots per row{where}")
        self.modality = modality
        self.targets = targets
        self.slots = slots
        self.source = source


def document_fields(doc: Document, latent_id: int, latent_dim: int) -> dict[str, np.ndarray]:
    """The per-position fields of one document (length ``n``), before placing it in a row."""
    tokens = np.asarray(doc.tokens, dtype=np.int32)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"document tokens must be a non-empty 1-D sequence{_at(doc)}")
    n = tokens.size
    modality = np.zeros(n, np.int8)
    slots = np.flatnonzero(tokens == latent_id)
    if len(doc.latents) != len(doc.modalities):
        raise ValueError(f"{len(doc.latents)} latent arrays but {len(doc.modalities)} modalities"
                         f"{_at(doc)}")
    counts = [int(np.shape(z)[0]) for z in doc.latents]
    if sum(counts) != slots.size:
        raise ValueError(f"{slots.size} <latent> positions but {sum(counts)} latent vectors"
                         f"{_at(doc)}")
    out = {"tokens": tokens, "modality": modality}
    if latent_dim > 0:
        latents = np.zeros((n, latent_dim), np.float32)
        start = 0
        for j, (z, mod) in enumerate(zip(doc.latents, doc.modalities, strict=True)):
            z = np.asarray(z, np.float32)
            if mod not in MODALITY_NAMES:
                raise ValueError(f"span modality must be one of {sorted(MODALITY_NAMES)}, got "
                                 f"{mod}{_at(doc)}")
            if z.ndim != 2 or z.shape[1] > latent_dim:
                raise ValueError(f"latents of shape {z.shape} do not fit latent_dim={latent_dim}"
                                 f"{_at(doc)}")
            where = slots[start: start + z.shape[0]]
            if where.size > 1 and where[-1] - where[0] != where.size - 1:
                raise ValueError(f"span {j} of {z.shape[0]} latents is not one contiguous "
                                 f"run of <latent> positions{_at(doc)}")
            latents[where, : z.shape[1]] = z
            modality[where] = mod
            start += z.shape[0]
        out["latents"] = latents
    elif slots.size:
        raise ValueError(f"document has latents but latent_dim=0 (a text-only pipeline){_at(doc)}")

    nxt = np.zeros(n, np.int8)
    nxt[:-1] = modality[1:]
    targets = np.zeros(n, np.int32)
    targets[:-1] = tokens[1:]
    has_next = np.arange(n) < n - 1
    out["targets"] = targets
    # CE where the next element is a discrete token, or an audio latent ("<latent>": continue).
    out["ce_mask"] = has_next & ((nxt == TEXT) | (nxt == AUDIO))
    out["latent_mask"] = nxt != TEXT
    out["latent_modality"] = nxt
    return out


def _at(doc: Document) -> str:
    return f" ({doc.source})" if doc.source else ""


class RowPacker:
    """Greedy packing into one row at a time.

    ``add(doc)`` returns ``False`` (and changes nothing) when ``doc`` does not fit in what is left
    of the current row; the caller then takes the row with ``flush()`` and adds ``doc`` again.
    ``latent_dim = 0`` gives the text-only fields; ``> 0`` adds the latent fields with that width.
    ``target_budget`` ``{modality: slots}``: ``add`` also returns ``False`` when ``doc`` would take
    a modality's latent targets in the row above its slots (``None``: no budget).
    """

    def __init__(self, seq_len: int, *, latent_id: int, latent_dim: int = 0,
                 target_budget: Mapping[int, int] | None = None):
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if target_budget and min(target_budget.values()) <= 0:
            raise ValueError(f"target budget slots must be positive, got {dict(target_budget)}")
        self.seq_len = seq_len
        self.latent_id = latent_id
        self.latent_dim = latent_dim
        self.target_budget = dict(target_budget or {})
        self._row = self._empty()
        self._used = 0
        self._segments = 0
        self._targets: dict[int, int] = {}

    @property
    def keys(self) -> tuple[str, ...]:
        return TEXT_KEYS + LATENT_KEYS if self.latent_dim > 0 else TEXT_KEYS

    @property
    def used(self) -> int:
        """Positions of the current row already filled."""
        return self._used

    @property
    def num_documents(self) -> int:
        return self._segments

    @property
    def targets(self) -> dict[int, int]:
        """Latent targets per modality in the current row."""
        return dict(self._targets)

    def _empty(self) -> dict[str, np.ndarray]:
        L = self.seq_len
        row = {
            "tokens": np.zeros(L, np.int32),
            "targets": np.zeros(L, np.int32),
            "ce_mask": np.zeros(L, bool),
            "segment_ids": np.zeros(L, np.int32),
            "positions": np.zeros(L, np.int32),
        }
        if self.latent_dim > 0:
            row.update(
                modality=np.zeros(L, np.int8),
                latents=np.zeros((L, self.latent_dim), np.float32),
                latent_mask=np.zeros(L, bool),
                latent_modality=np.zeros(L, np.int8),
            )
        return row

    def check(self, doc: Document) -> None:
        """Raises :class:`DocumentTooLong` or :class:`DocumentTooManyTargets` if ``doc`` can
        never fit in a row."""
        if len(doc) > self.seq_len:
            raise DocumentTooLong(len(doc), self.seq_len, doc.source)
        for m, k in doc.targets().items():
            slots = self.target_budget.get(m)
            if slots is not None and k > slots:
                raise DocumentTooManyTargets(m, k, slots, doc.source)

    def add(self, doc: Document) -> bool:
        self.check(doc)
        n = len(doc)
        if self._used + n > self.seq_len:
            return False
        targets, budget = doc.targets(), self.target_budget
        if any(m in budget and self._targets.get(m, 0) + k > budget[m]
               for m, k in targets.items()):
            return False
        fields = document_fields(doc, self.latent_id, self.latent_dim)
        s = slice(self._used, self._used + n)
        self._segments += 1
        row = self._row
        row["segment_ids"][s] = self._segments
        row["positions"][s] = np.arange(n, dtype=np.int32)
        for key in self.keys:
            if key in fields:
                row[key][s] = fields[key]
        self._used += n
        for m, k in targets.items():
            self._targets[m] = self._targets.get(m, 0) + k
        return True

    def flush(self) -> dict[str, np.ndarray]:
        """The current row (zero-padded) and a fresh empty one."""
        row, self._row = self._row, self._empty()
        self._used = 0
        self._segments = 0
        self._targets = {}
        return row


def pack_documents(
    docs: Iterable[Document], seq_len: int, *, latent_id: int, latent_dim: int = 0,
    target_budget: Mapping[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Packs ``docs`` greedily, in order, into ``[rows, seq_len]`` arrays (the last row padded).

    Raises :class:`DocumentTooLong` for a document longer than ``seq_len``
    (:class:`DocumentTooManyTargets` for one over ``target_budget``).
    """
    packer = RowPacker(seq_len, latent_id=latent_id, latent_dim=latent_dim,
                       target_budget=target_budget)
    rows: list[dict[str, np.ndarray]] = []
    for doc in docs:
        if not packer.add(doc):
            rows.append(packer.flush())
            packer.add(doc)
    if packer.used:
        rows.append(packer.flush())
    if not rows:
        return {k: np.zeros((0, *v.shape), v.dtype) for k, v in packer.flush().items()}
    return stack_rows(rows)


def stack_rows(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
