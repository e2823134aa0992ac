"""What happens to a bad training example: skip it (counted, logged once per reason) or stop.

Sources raise :class:`BadInput`; a :class:`BadInputPolicy` built from ``config.data.bad_input``
decides. In ``"error"`` mode it raises a one-line :class:`DataError`; in ``"skip"`` mode it counts
the example under its reason and returns ``None`` (Grain's map/filter/iteration drop ``None``).

Counts and Grain worker processes. Each Grain worker holds its own copy of the policy (the whole
dataset graph is pickled into the worker, shared references stay shared), so counts made there
never reach the trainer by themselves. The pipeline therefore calls :func:`attach_skip_counts` on
every batch it emits (in the worker, after packing): it moves the counts made since the previous
batch into ``batch[SKIP_COUNTS_KEY]``. The trainer pops them with :func:`pop_skip_counts` before
the batch goes to the devices and adds them to a :class:`SkipTotals`, whose cumulative
``as_metrics()`` goes into ``metrics.jsonl`` as ``data/skipped/<reason>``. The same path works
with ``num_workers=0``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

_LOG = logging.getLogger(__name__)

METRIC_PREFIX = "data/skipped/"
SKIP_COUNTS_KEY = "_skipped_counts"
MODES = ("skip", "error")

# Reasons used by the sources in this package (others may be added; names are free-form
# identifiers that become metric names).
REASONS = (
    "missing_file",  # a referenced image/audio/shard file does not exist
    "corrupt_image",  # Pillow cannot decode it (bad bytes, truncated, bomb)
    "corrupt_audio",  # soundfile cannot decode it, truncated data, non-finite samples
    "empty_audio",  # decodes to zero samples
    "empty_text",  # text is empty or whitespace only
    "invalid_utf8",  # the line (or a text feature) is not valid UTF-8
    "bad_json",  # a manifest line is not a JSON object
    "missing_keys",  # a manifest line has none of "text", "image", "audio"
    "bad_field",  # a field has the wrong type / shape / dtype
    "corrupt_record",  # an ArrayRecord record cannot be decoded
    "too_long",  # the packer: the example does not fit in data.seq_len
    "too_many_targets",  # the packer: more latent targets than the diffusion head's slots per row
    "too_large",  # an image over data.max_image_pixels (refused before it is decoded)
    "no_image",  # (NotApplicable) a reader of images only (an image σ-VAE) met an example without
    "no_audio",  # (NotApplicable) likewise for audio
)


_LINE_KINDS = ("manifest", "text_file")  # sources whose records are lines of a file


class BadInput(Exception):
    """One unusable example.

    Attributes:
      reason: short identifier (see ``REASONS``); becomes ``data/skipped/<reason>``.
      detail: human-readable explanation.
      file: the offending media/shard file, when there is one.
      where: the record's location, e.g. ``manifest:/data/m.jsonl:12`` (sources set it).
    """

    def __init__(self, reason: str, detail: str, *, file: str | None = None, where: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.file = file
        self.where = where

    def __reduce__(self):  # keep keyword-only fields when pickled across processes
        return (_rebuild_bad_input, (self.reason, self.detail, self.file, self.where))


def _rebuild_bad_input(reason: str, detail: str, file: str | None, where: str) -> BadInput:
    return BadInput(reason, detail, file=file, where=where)


class NotApplicable(BadInput):
    """An example this reader does not use, e.g. an audio-only manifest line read by an image
    σ-VAE. Counted under its reason like a bad input, but never an error under ``"error"``: it
    is a good example for other readers of the same data."""

    def __reduce__(self):
        return (_rebuild_not_applicable, (self.reason, self.detail, self.file, self.where))


def _rebuild_not_applicable(reason: str, detail: str, file: str | None,
                            where: str) -> NotApplicable:
    return NotApplicable(reason, detail, file=file, where=where)


class DataError(RuntimeError):
    """A bad example under ``data.bad_input = "error"``."""


def describe_where(where: str) -> str:
    """``manifest:/d/m.jsonl:12`` -> ``manifest /d/m.jsonl line 12`` (``text_file`` likewise);
    ``<kind>:<path>:<n>`` -> ``<kind> <path> record <n>``."""
    kind, sep, rest = where.partition(":")
    if not sep:
        return where
    path, sep, index = rest.rpartition(":")
    if not sep or not index.isdigit():
        return f"{kind} {rest}"
    unit = "line" if kind in _LINE_KINDS else "record"
    return f"{kind} {path} {unit} {index}"


def _where_path(where: str) -> str:
    """The file part of ``<kind>:<path>:<n>``."""
    return where.partition(":")[2].rpartition(":")[0]


def format_bad_input(exc: BadInput, where: str = "") -> str:
    """One line: reason, location (file and manifest line), detail."""
    parts = [f"bad input ({exc.reason})"]
    location = where or exc.where
    if location:
        parts.append(f" at {describe_where(location)}")
    if exc.file and exc.file != _where_path(location):  # a text file's line names it already
        parts.append(f", file {exc.file}")
    detail = " ".join(str(exc.detail).split())  # keep it on one line
    return "".join(parts) + f": {detail}"


class BadInputPolicy:
    """``mode="error"``: raise :class:`DataError`. ``mode="skip"``: count, warn once per reason,
    return ``None``. A :class:`NotApplicable` example is counted (logged at INFO) in both modes."""

    def __init__(self, mode: str = "skip", logger: logging.Logger | None = None):
        if mode not in MODES:
            raise ValueError(f"data.bad_input must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._logger = logger or _LOG
        self._lock = threading.Lock()
        self._total: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._warned: set[str] = set()

    def handle(self, exc: BadInput, where: str = "") -> None:
        """Deal with one bad example; returns ``None`` (skip) or raises :class:`DataError`."""
        message = format_bad_input(exc, where)
        applicable = not isinstance(exc, NotApplicable)
        if self.mode == "error" and applicable:
            raise DataError(message + " (set data.bad_input='skip' to skip such examples)") from exc
        with self._lock:
            self._total[exc.reason] = self._total.get(exc.reason, 0) + 1
            self._pending[exc.reason] = self._pending.get(exc.reason, 0) + 1
            first = exc.reason not in self._warned
            self._warned.add(exc.reason)
        if first:
            self._logger.log(
                logging.WARNING if applicable else logging.INFO,
                "%s -- skipped; further '%s' examples are counted in %s%s, not logged",
                message,
                exc.reason,
                METRIC_PREFIX,
                exc.reason,
            )
        return None

    def counts(self) -> dict[str, int]:
        """Everything skipped by this copy of the policy: ``{"data/skipped/<reason>": n}``."""
        with self._lock:
            return {METRIC_PREFIX + r: n for r, n in sorted(self._total.items())}

    def drain(self) -> dict[str, int]:
        """Counts since the previous ``drain()`` (``{"data/skipped/<reason>": n}``); resets them."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return {METRIC_PREFIX + r: n for r, n in sorted(pending.items())}

    # Locks and loggers do not travel to Grain workers; each process starts its own.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock")
        state["_logger"] = self._logger.name
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["_logger"] = logging.getLogger(state["_logger"])
        self.__dict__.update(state)
        self._lock = threading.Lock()


def attach_skip_counts(batch: dict[str, Any], policy: BadInputPolicy) -> dict[str, Any]:
    """Move the policy's pending counts into ``batch[SKIP_COUNTS_KEY]`` (call where batches are
    made, i.e. inside the Grain worker)."""
    batch[SKIP_COUNTS_KEY] = policy.drain()
    return batch


def pop_skip_counts(batch: dict[str, Any]) -> dict[str, int]:
    """Remove and return the counts a batch carries (``{}`` if none); call before device_put."""
    return dict(batch.pop(SKIP_COUNTS_KEY, None) or {})


class SkipTotals:
    """Trainer-side running totals of the counts that arrive with batches."""

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}

    def add(self, counts: Mapping[str, int]) -> None:
        for key, n in counts.items():
            self._totals[key] = self._totals.get(key, 0) + int(n)

    def as_metrics(self) -> dict[str, int]:
        return dict(sorted(self._totals.items()))


def skip_summary(counts: Mapping[str, int]) -> str:
    """``{"data/skipped/missing_file": 2, "corrupt_image": 1}`` -> ``"skipped 2 (missing_file),
    1 (corrupt_image)"`` (the caller's order; the ``data/skipped/`` prefix optional); ``""`` when
    nothing was skipped."""
    parts = [f"{int(n)} ({key.removeprefix(METRIC_PREFIX)})" for key, n in counts.items() if n]
    return "skipped " + ", ".join(parts) if parts else ""


def print_skip_summary(counts: Mapping[str, int], file: TextIO | None = None) -> None:
    """What every command prints at its end under ``data.bad_input='skip'``: one line with the
    examples skipped per reason (nothing when none were). ``file`` defaults to stdout."""
    line = skip_summary(counts)
    if line:
        print(line, file=file or sys.stdout, flush=True)


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class SkippingSource:
    """Wraps a source whose ``__getitem__`` may raise :class:`BadInput`: bad examples become
    ``None`` under ``"skip"`` (``grain.MapDataset.source(SkippingSource(src, policy))``, optionally
    ``.filter(lambda x: x is not None)``), or a :class:`DataError` under ``"error"``.
    """

    def __init__(self, source: RandomAccessSource, policy: BadInputPolicy):
        self.source = source
        self.policy = policy

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.source[index]
        except BadInput as exc:
            return self.policy.handle(exc, exc.where or f"{type(self.source).__name__}:{index}")

    def __repr__(self) -> str:
        return f"SkippingSource({self.source!r}, mode={self.policy.mode!r})"
