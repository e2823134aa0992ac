"""Float image sets as one ``.npy`` ``[N, H, W, 3]`` in [0, 1], streamed through the path layer.

LatentLM's authors score the decoded images as floats clamped to [0, 1], never quantised to 8 bits
(``evaluate_fid.py:192-199``); ``latentlm generate`` writes them as ``images.npy`` beside its PNGs
and ``latentlm eval-images --images F.npy`` scores them. Both sides stream: the writer puts the
header (the count is known before the first image) and then each batch; the reader checks the
header and the file's length before any image is read, then reads a few images at a time, so a
50,000-image 256-px set (39 GB in float32) never sits in memory.

Values are clamped to [0, 1] as read (decoder overshoot). Values far outside it — below -0.5 or
above 1.5, the look of [-1, 1] or 0–255 images — and NaN / Inf are a one-line error naming the
file, never a silent clamp.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
LOW, HIGH = -0.5, 1.5  # outside: not a [0, 1] image (clamping would hide the mistake)
_READ_ROWS = 16  # images per read


class FloatImageFile:
    """The images of a ``.npy`` float array ``[N, H, W, 3]``, checked when opened (a bad file is
    a one-line :class:`ConfigError` naming ``flag`` and the path); iterates float32 ``[H, W, 3]``
    in [0, 1]."""

    def __init__(self, path: str, flag: str):
        self.path, self.flag = path, flag
        if not paths.is_file(path):
            raise ConfigError("", f"{flag} {path}: no such file")
        with paths.open_file(path, "rb") as f:
            self.dtype, self.shape, self.offset = _read_header(f, self._error)
            size = f.seek(0, io.SEEK_END)
        want = self.offset + int(np.prod(self.shape)) * self.dtype.itemsize
        if size != want:
            raise self._error(f"{size:,} bytes where its header {self.shape} needs {want:,} "
                       f"({'truncated' if size < want else 'trailing bytes'})")

    def _error(self, message: str) -> ConfigError:
        return ConfigError("", f"{self.flag} {self.path}: {message}")

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        n, h, w, _ = self.shape
        image_bytes = h * w * 3 * self.dtype.itemsize
        with paths.open_file(self.path, "rb") as f:
            f.seek(self.offset)
            for start in range(0, n, _READ_ROWS):
                rows = min(_READ_ROWS, n - start)
                block = np.frombuffer(f.read(rows * image_bytes), self.dtype)
                block = block.reshape(rows, h, w, 3).astype(np.float32)
                self._check_values(block, start)
                yield from np.clip(block, 0.0, 1.0)

    def _check_values(self, block: np.ndarray, start: int) -> None:
        bad = ~np.isfinite(block) | (block < LOW) | (block > HIGH)
        if bad.any():
            i = start + int(np.flatnonzero(bad.reshape(len(block), -1).any(axis=1))[0])
            finite = block[np.isfinite(block)]
            span = f"min {finite.min():.4g}, max {finite.max():.4g}" if finite.size else "no"
            nan = "" if np.isfinite(block).all() else ", NaN / Inf"
            raise self._error(f"image {i} has values outside [0, 1] beyond clamping ({span} "
                              f"finite values{nan}): a .npy holds float images in [0, 1] "
                              f"(rescale [-1, 1] as x/2 + 0.5, 0–255 as x/255)")


def _read_header(f: IO[bytes], error: Callable[[str], Exception]
                 ) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of the ``.npy`` open in ``f``; anything but a C-order float
    array ``[N ≥ 1, H ≥ 1, W ≥ 1, 3]`` raises ``error(message)``."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        header = None if read is None else read(f, max_header_size=100_000)
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise error(f"not a .npy file ({exc})") from exc
    if header is None:
        raise error(f"unsupported .npy version {version}")
    shape, fortran, dtype = header
    if dtype.type not in FLOAT_DTYPES:
        raise error(f"dtype {dtype}, not float16/32/64 (8-bit images: PNG files in a folder)")
    if len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
        raise error(f"shape {shape}, not [N, H, W, 3] images")
    if fortran:
        raise error("a Fortran-order array: save np.ascontiguousarray(images)")
    return dtype, tuple(int(s) for s in shape), f.tell()


class FloatImageWriter:
    """Writes ``count`` float images, batch by batch, as ``path`` = ``.npy`` float32
    ``[count, H, W, 3]`` (H, W from the first batch); values clamped to [0, 1]. Use as a context
    manager; fewer or more images than ``count``, or a change of size, is a ``ValueError``."""

    def __init__(self, path: str, count: int):
        if count < 1:
            raise ValueError(f"count must be ≥ 1, got {count}")
        self.path, self.count, self.written = path, count, 0
        self._file: IO[bytes] | None = None
        self._shape: tuple[int, ...] | None = None

    def __enter__(self) -> FloatImageWriter:
        return self

    def append(self, images: np.ndarray) -> None:
        """``images``: float ``[B, H, W, 3]`` (nominally in [0, 1])."""
        x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got {x.shape}")
        if self._file is None:
            self._shape = x.shape[1:]
            paths.makedirs(paths.resolve(self.path).parent)
            self._file = paths.open_file(self.path, "wb")
            np.lib.format.write_array_header_1_0(self._file, {
                "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                "shape": (self.count, *self._shape)})
        if x.shape[1:] != self._shape or self.written + len(x) > self.count:
            raise ValueError(f"{self.path}: {self.written} + {x.shape} images do not fit "
                             f"[{self.count}, {', '.join(map(str, self._shape))}]")
        self._file.write(np.ascontiguousarray(x, "<f4").tobytes())
        self.written += len(x)

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()
        if exc_info[0] is None and self.written != self.count:
            raise ValueError(f"{self.path}: wrote {self.written} of {self.count} images")
