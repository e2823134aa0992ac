"""Random-access text sources: the built-in captions and plain text files.

Every source has ``__len__`` and ``__getitem__(i) -> {"text": str, "source": str}`` (the shape the
manifest/TFDS sources use for text), is picklable (Grain worker processes) and plugs into
``grain.MapDataset.source(...)``.

Plain text files: **one document per non-empty line** (a line with at least one non-whitespace
byte). Lines are the unit because they index cheaply (byte offsets, so random access reads one
line) and match JSONL/corpus dumps where one record is one line; paragraph-per-document text can be
converted by joining each paragraph onto one line. The line end (``\\n`` or ``\\r\\n``) is removed,
everything else is kept; a UTF-8 byte-order mark at the start of a file is dropped. A line that is
not valid UTF-8 raises :class:`~latentlm_jax.data.bad_input.BadInput` (``invalid_utf8``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from latentlm_jax import paths
from latentlm_jax.data.bad_input import BadInput
from latentlm_jax.data.indexing import check_index
from latentlm_jax.data.manifest import check_text, index_lines

# grain's global shuffle permutes 32-bit indices, so a source is at most this long.
MAX_SOURCE_LEN = 2**31 - 1


class CaptionSource:
    """The captions of the built-in *shapes & tones* data as text documents.

    Index ``2i`` is the image caption of example ``i``, ``2i + 1`` its audio caption. The dataset
    is procedural, so its length is capped at ``MAX_SOURCE_LEN`` documents (or ``num_examples``
    examples when given).
    """

    def __init__(self, split: str = "train", seed: int = 0, num_examples: int | None = None):
        from latentlm_jax.data.shapes_tones import ShapesTones

        self.split = split
        self.seed = seed
        self._ds = ShapesTones(split=split, seed=seed)
        n = len(self._ds) if num_examples is None else min(num_examples, len(self._ds))
        self._len = min(2 * n, MAX_SOURCE_LEN)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(index, self._len, "documents")
        example_index, which = divmod(i, 2)
        if which:  # the pitches are drawn after the image: generate the example
            key, text = "audio_caption", self._ds[example_index]["audio_caption"]
        else:  # attributes only, no rendering (~17x faster)
            from latentlm_jax.data.shapes_tones import image_caption

            key, text = "image_caption", image_caption(**self._ds.attributes(example_index))
        return {"text": text, "source": f"shapes_tones:{self.split}:{example_index}:{key}"}

    def __repr__(self) -> str:
        return f"CaptionSource(split={self.split!r}, seed={self.seed}, {self._len} documents)"


class ShapesTonesSource:
    """The built-in *shapes & tones* examples with a ``source`` field (for the multimodal tasks
    of :mod:`latentlm_jax.data.sequences`)."""

    def __init__(self, split: str = "train", seed: int = 0, num_examples: int | None = None):
        from latentlm_jax.data.shapes_tones import ShapesTones

        self.split = split
        self.seed = seed
        self._ds = ShapesTones(split=split, seed=seed)
        n = len(self._ds) if num_examples is None else min(num_examples, len(self._ds))
        self._len = min(n, MAX_SOURCE_LEN)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(index, self._len, "documents")
        example = dict(self._ds[i])
        example["source"] = f"shapes_tones:{self.split}:{i}"
        return example

    def __repr__(self) -> str:
        return f"ShapesTonesSource(split={self.split!r}, seed={self.seed}, {self._len} examples)"


def expand_paths(patterns: str | Sequence[str]) -> list[str]:
    """Paths and globs (local or URLs) -> sorted absolute paths (each glob sorted, order of
    patterns kept)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found: list[str] = []
    for pattern in patterns:
        if paths.has_glob(pattern):
            matches = paths.glob_files(pattern)
            if not matches:
                raise FileNotFoundError(f"no file matches {pattern!r}")
            found.extend(matches)
        elif paths.is_file(pattern):
            found.append(paths.as_str(pattern))
        else:
            raise FileNotFoundError(f"text file not found: {pattern}")
    return found


class TextFileSource:
    """Plain UTF-8 text files, one document per non-empty line (see the module docstring).

    ``source[i]`` is ``{"text": str, "source": "text_file:<abs path>:<line>"}`` (1-based line) or
    raises :class:`BadInput`. Files are indexed once at construction (24 bytes per line).
    """

    def __init__(self, paths: str | Sequence[str]):
        self.paths = expand_paths(paths)
        if not self.paths:
            raise ValueError("TextFileSource needs at least one file (data.text_files)")
        starts, ends, lines, files = [], [], [], []
        for k, path in enumerate(self.paths):
            s, e, n = index_lines(path)
            starts.append(s)
            ends.append(e)
            lines.append(n)
            files.append(np.full(s.shape, k, np.int32))
        self._starts = np.concatenate(starts)
        self._ends = np.concatenate(ends)
        self._lines = np.concatenate(lines)
        self._files = np.concatenate(files)
        if len(self._starts) > MAX_SOURCE_LEN:
            raise ValueError(f"{len(self._starts)} lines: more than {MAX_SOURCE_LEN} documents")
        self._fds: dict[int, int] = {}
        self._remote: dict[int, tuple[Any, threading.Lock]] = {}  # URL: open object, its lock

    def __len__(self) -> int:
        return int(self._starts.shape[0])

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:  # two reader threads may race here; keep one descriptor
            new = os.open(self.paths[k], os.O_RDONLY)
            fd = self._fds.setdefault(k, new)
            if fd != new:
                os.close(new)
        return fd

    def _read(self, k: int, start: int, size: int) -> bytes:
        if paths.is_url(self.paths[k]):  # an object in a bucket, kept open (its read-ahead cache)
            entry = self._remote.get(k)
            if entry is None:  # two reader threads may race here; keep one handle
                new = (paths.open_file(self.paths[k], "rb"), threading.Lock())
                entry = self._remote.setdefault(k, new)
                if entry is not new:
                    new[0].close()
            f, lock = entry
            with lock:  # seek + read on one shared handle
                f.seek(start)
                return f.read(size)
        return os.pread(self._fd(k), size, start)  # positionless: safe across threads

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(index, len(self), "documents")
        k, line = int(self._files[i]), int(self._lines[i])
        start, end = int(self._starts[i]), int(self._ends[i])
        where = f"text_file:{self.paths[k]}:{line}"
        raw = self._read(k, start, end - start)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = check_text(raw)
        except BadInput as exc:
            exc.where = where
            exc.file = self.paths[k]
            raise
        return {"text": text, "source": where}

    # Open file descriptors do not travel to Grain worker processes; each opens its own.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"], state["_remote"] = {}, {}
        return state

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        for f, _ in getattr(self, "_remote", {}).values():
            with contextlib.suppress(Exception):
                f.close()

    def __repr__(self) -> str:
        return f"TextFileSource({len(self.paths)} files, {len(self)} documents)"
