"""Pre-encoded latents in ArrayRecord shards: a writer and a random-access source over shards.

One record per example, serialised with msgpack (no pickle, so reading untrusted shards cannot run
code). A record is a msgpack map of its fields; NumPy arrays are msgpack extension type 1 whose
payload is itself msgpack ``[dtype string, shape list, raw C-order bytes]``, e.g.
``["<f4", [256, 16], b"..."]``. Scalars are plain msgpack ints / floats / strings / booleans. The
only overhead over the raw latents is about 40 bytes per record.

Record fields: ``latents`` float ``[N, D]`` (stored as float32, or float16 with
``write_latents(..., dtype="float16")``; always read back as float32), ``caption`` (str, may be
empty for unconditional data), ``modality`` (``"image"`` | ``"audio"``), plus any extra scalar
fields (e.g. ``height``/``width`` of the latent grid, ``label``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grain
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from latentlm_jax import paths
from latentlm_jax.data.bad_input import BadInput
from latentlm_jax.data.indexing import check_index
from latentlm_jax.modality import MODALITY_IDS

MODALITIES = tuple(MODALITY_IDS)
_NDARRAY_EXT = 1
_SCALARS = (bool, int, float, str)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        payload = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()])
        return msgpack.ExtType(_NDARRAY_EXT, payload)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != _NDARRAY_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    dtype, shape, data = msgpack.unpackb(payload, raw=False)
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ValueError("object arrays are not allowed")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def encode_record(record: dict[str, Any], *, dtype: str = "float32") -> bytes:
    """Check one latent record and serialise it (see the module docstring)."""
    if np.dtype(dtype) not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    out: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(key, str):
            raise TypeError(f"record keys must be strings, got {key!r}")
        if key == "latents":
            arr = np.asarray(value)
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(
                    f"latents must be a float array [N, D], got {arr.dtype}{arr.shape}"
                )
            if not np.isfinite(arr).all():
                raise ValueError("latents contain NaN or inf")
            out[key] = arr.astype(np.dtype(dtype).newbyteorder("<"))
        elif isinstance(value, np.generic) and isinstance(value.item(), _SCALARS):
            out[key] = value.item()
        elif isinstance(value, _SCALARS):
            out[key] = value
        else:
            raise TypeError(f"field {key!r}: only scalars (int, float, str, bool) besides latents")
    for key in ("latents", "caption", "modality"):
        if key not in out:
            raise ValueError(f"latent record needs {key!r}")
    if not isinstance(out["caption"], str):
        raise TypeError("caption must be a string")
    if out["modality"] not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {out['modality']!r}")
    return msgpack.packb(out, default=_default, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_record`; ``latents`` comes back as a writable float32 array."""
    record = msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=True)
    if not isinstance(record, dict) or not isinstance(record.get("latents"), np.ndarray):
        raise ValueError("not a latent record")
    latents = record["latents"]
    if latents.ndim != 2:
        raise ValueError(f"latents must be [N, D], got shape {latents.shape}")
    record["latents"] = latents.astype(np.float32)  # copies: frombuffer arrays are read-only
    return record


URL_SHARDS = ("ArrayRecord shards cannot be read from {url}: array_record's reader opens local "
              "files only; mount the bucket (gcsfuse) and name the shards by their mounted path "
              "(docs/storage.md)")


def write_latents(path: paths.PathLike, records: Iterable[dict[str, Any]], *,
                  dtype: str = "float32") -> int:
    """Write records to one ArrayRecord shard (one record per chunk, for random access).
    Returns the number written. A URL ``path`` is written locally, then uploaded."""
    with paths.local_file_for_writing(path) as local:
        writer = ArrayRecordWriter(local, "group_size:1")
        n = 0
        try:
            for record in records:
                writer.write(encode_record(record, dtype=dtype))
                n += 1
        finally:
            writer.close()
    return n


def expand_paths(shards: str | Sequence[str]) -> list[str]:
    """Paths or glob patterns -> existing files, in order (each pattern's matches sorted).
    Local files only (:data:`URL_SHARDS`: a ``ValueError`` for a URL)."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    files: list[str] = []
    for pattern in patterns:
        if paths.is_url(pattern):
            raise ValueError(URL_SHARDS.format(url=pattern))
        matches = (paths.glob_files(pattern) if paths.has_glob(pattern)
                   else [paths.as_str(pattern)])
        if not matches:
            raise FileNotFoundError(f"no latent shard matches {pattern!r}")
        files.extend(matches)
    missing = [f for f in files if not paths.is_file(f)]
    if missing:
        raise FileNotFoundError(f"latent shard(s) not found: {missing}")
    if not files:
        raise ValueError("no latent shards given")
    return files


def _num_records(path: str) -> int:
    reader = ArrayRecordReader(path, "readahead_buffer_size:0")
    if not reader.ok():  # the reader does not raise on open; close() would
        raise ValueError(f"not a readable ArrayRecord file: {path}")
    try:
        return int(reader.num_records())
    finally:
        reader.close()


class LatentArrayRecordSource:
    """Random access over one or several latent shards (concatenated in the given order).

    ``source[i]`` -> ``{"latents": float32[N, D], "caption": str, "modality": str, <extra fields>,
    "source": "array_record:<shard>:<index in shard>"}`` or raises :class:`BadInput`
    (``corrupt_record``).
    """

    def __init__(self, paths: str | Sequence[str]):
        self.paths = expand_paths(paths)
        sizes = np.array([_num_records(p) for p in self.paths], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._data = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(index, len(self), "latent records")
        shard = int(np.searchsorted(self._offsets, i, side="right")) - 1
        where = f"array_record:{self.paths[shard]}:{i - int(self._offsets[shard])}"
        try:
            record = decode_record(self._data[i])
        except Exception as exc:  # bytes that are not a latent record
            raise BadInput(
                "corrupt_record",
                f"cannot decode latent record: {exc}",
                file=self.paths[shard],
                where=where,
            ) from exc
        record["source"] = where
        return record

    def __repr__(self) -> str:
        return f"LatentArrayRecordSource({len(self.paths)} shards, {len(self)} records)"
