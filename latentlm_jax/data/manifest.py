"""A JSONL manifest of user files as a random-access source.

Each non-blank line is one example, a JSON object with any of ``"text"`` (a string), ``"image"``
(a path) and ``"audio"`` (a path); relative paths are resolved against the manifest's directory,
URLs must be of a scheme the path layer reads (``gs://``, ``s3://``, ...; others are ``bad_field``)
and other keys are ignored::

    {"text": "a red circle", "image": "img/0001.png"}
    {"audio": "/data/clips/a.flac", "text": "a dog barks"}
    {"text": "plain text documents work too"}

The file is indexed once (byte offsets of its non-blank lines, read in chunks, so a large manifest
costs 24 bytes per line) and every ``__getitem__`` reads and decodes one line as bytes, so invalid
UTF-8 on one line only affects that line.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from latentlm_jax import paths
from latentlm_jax.data.bad_input import BadInput, NotApplicable
from latentlm_jax.data.indexing import check_index
from latentlm_jax.data.media import (
    DEFAULT_IMAGE_CROP,
    DEFAULT_MAX_IMAGE_PIXELS,
    load_audio,
    load_image,
)

KEYS = ("text", "image", "audio")
_IS_CONTENT = np.ones(256, bool)  # byte -> not whitespace
_IS_CONTENT[np.frombuffer(b" \t\r\n\x0b\x0c", np.uint8)] = False
_CHUNK = 1 << 24


class ManifestSource:
    """Random access over a JSONL manifest; ``source[i]`` is
    ``{"text": str | None, "image": uint8[res, res, 3] | None, "audio": float32[num_samples] | None,
    "source": "manifest:<abs path>:<line>"}`` (1-based line) or raises :class:`BadInput`.

    ``image_resolution=None`` keeps images at their own size; ``num_samples <= 0`` keeps the whole
    (resampled) audio clip; images over ``max_image_pixels`` are ``too_large``. ``only="image"``
    (or ``"audio"``, ``"text"``) reads that field alone, for a reader that needs nothing else (a
    σ-VAE): lines without it raise :class:`NotApplicable` (``no_image``: counted, never an error),
    the other fields are neither read nor checked.
    """

    def __init__(
        self,
        path: str,
        *,
        image_resolution: int | None,
        sample_rate: int,
        num_samples: int,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        only: str | None = None,
        label: str = "",
        image_crop: str = DEFAULT_IMAGE_CROP,
    ):
        if only is not None and only not in KEYS:
            raise ValueError(f"only must be one of {KEYS}, got {only!r}")
        self.path = paths.as_str(path)
        if not paths.is_file(self.path):
            raise FileNotFoundError(f"manifest not found: {self.path}")
        self.root = str(paths.resolve(self.path).parent)
        self.image_resolution = image_resolution
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.max_image_pixels = max_image_pixels
        self.image_crop = image_crop  # data.image_crop (data/media.py IMAGE_CROPS)
        self.only = only
        self.label = label  # data.label: the key of the class label, given as "label"
        self._starts, self._ends, self._line_numbers = index_lines(self.path)

    def __len__(self) -> int:
        return int(self._starts.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(index, len(self), "manifest examples")
        line = int(self._line_numbers[i])
        where = f"manifest:{self.path}:{line}"
        with paths.open_file(self.path, "rb") as f:
            f.seek(int(self._starts[i]))
            raw = f.read(int(self._ends[i] - self._starts[i]))
        try:
            example = self._parse(raw, first_line=line == 1)
        except BadInput as exc:
            exc.where = where
            raise
        example["source"] = where
        return example

    def _parse(self, raw: bytes, *, first_line: bool) -> dict[str, Any]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput("invalid_utf8", f"byte {exc.start}: {exc.reason}") from exc
        if first_line:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput("bad_json", f"{exc.msg} (column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise BadInput("bad_json", f"expected a JSON object, got {type(obj).__name__}")
        if all(obj.get(k) is None for k in KEYS):
            raise BadInput("missing_keys", f"none of {', '.join(KEYS)} in keys {sorted(obj)}")
        if self.only is not None and obj.get(self.only) is None:
            raise NotApplicable(f"no_{self.only}", f'no "{self.only}" (only {self.only} is '
                                                   f"read) in keys {sorted(obj)}")
        label = read_label(obj, self.label) if self.label else None
        if self.only is not None:
            obj = {self.only: obj[self.only]}

        text = obj.get("text")
        if text is not None:
            text = check_text(text)
        image = audio = None
        if obj.get("image") is not None:
            image = load_image(self._resolve(obj["image"], "image"), self.image_resolution,
                               self.max_image_pixels, self.image_crop)
        if obj.get("audio") is not None:
            path = self._resolve(obj["audio"], "audio")
            audio = load_audio(path, self.sample_rate, self.num_samples)
        out = {"text": text, "image": image, "audio": audio}
        if self.label:
            out["label"] = label
        return out

    def _resolve(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise BadInput("bad_field", f'"{key}" must be a non-empty path string, got {value!r}')
        if paths.is_url(value):
            try:  # a scheme the path layer has no filesystem for (http://, file://, ...)
                paths.resolve(value)
            except Exception as exc:  # epath raises a bare KeyError
                raise BadInput("bad_field", f'"{key}" is a URL of a scheme the path layer does '
                                            f"not read (gs://, s3://, ...): {value!r}") from exc
            return value
        if paths.is_url(self.root):  # a manifest in a bucket: its relative paths too
            return str(paths.join(self.root, value))
        return os.path.join(self.root, os.path.expanduser(value))  # an absolute path stays

    def __repr__(self) -> str:
        return f"ManifestSource({self.path!r}, {len(self)} examples)"


def read_label(obj: Any, key: str) -> int:
    """The class label ``obj[key]`` (data.label): a non-negative integer, else ``bad_field``."""
    try:
        value = obj[key]
    except (KeyError, IndexError, TypeError):
        raise BadInput("bad_field", f"no class label {key!r}") from None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInput("bad_field", f"class label {key!r} must be an integer ≥ 0, got {value!r}")
    return value


def check_text(text: Any) -> str:
    """A caption/document must be a non-blank string that encodes to UTF-8 (JSON allows lone
    surrogates such as ``"\\udc80"``, which would break the tokenizer later)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput("invalid_utf8", f"text byte {exc.start}: {exc.reason}") from exc
    if not isinstance(text, str):
        raise BadInput("bad_field", f'"text" must be a string, got {type(text).__name__}')
    if not text.strip():
        raise BadInput("empty_text", "text is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput("invalid_utf8", f"text character {exc.start}: {exc.reason}") from exc
    return text


def index_lines(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte ranges ``[start, end)`` and 1-based line numbers of the non-blank lines of ``path``."""
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    numbers: list[np.ndarray] = []
    offset = 0  # absolute offset of the current chunk
    line_start = 0  # absolute start of the line not yet terminated
    line_no = 1
    carried = 0  # non-whitespace bytes of that line seen in earlier chunks
    with paths.open_file(path, "rb") as f:
        while buf := f.read(_CHUNK):
            a = np.frombuffer(buf, np.uint8)
            counts = np.concatenate([[0], np.cumsum(_IS_CONTENT[a], dtype=np.int64)])
            newlines = np.flatnonzero(a == ord("\n"))
            if newlines.size:
                local_starts = np.concatenate([[0], newlines[:-1] + 1])
                content = counts[newlines] - counts[local_starts]
                content[0] += carried
                abs_starts = offset + local_starts
                abs_starts[0] = line_start
                keep = content > 0
                starts.append(abs_starts[keep])
                ends.append((offset + newlines)[keep])
                numbers.append((line_no + np.arange(newlines.size))[keep])
                line_no += newlines.size
                line_start = offset + int(newlines[-1]) + 1
                carried = int(counts[-1] - counts[newlines[-1] + 1])
            else:
                carried += int(counts[-1])
            offset += len(buf)
    if offset > line_start and carried > 0:  # last line without a newline
        starts.append(np.array([line_start]))
        ends.append(np.array([offset]))
        numbers.append(np.array([line_no]))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    return cat(starts), cat(ends), cat(numbers)
