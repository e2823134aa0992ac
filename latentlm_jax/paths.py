"""The one path layer: every file the framework reads or writes goes through here.

Local paths and URLs (``gs://bucket/...``, ``s3://``, and whatever ``etils.epath`` — the layer Orbax
itself uses — supports) are handled alike. Nothing here turns a URL into a local path: ``resolve``
makes a *local* path absolute and leaves a URL untouched.

Use ``join``/``Path`` (an ``epath.Path``) for paths; ``read_text``/``write_text`` (atomic),
``read_bytes``/``write_bytes`` for whole files; ``open_file`` for streams (and for libraries that
take a file object: Pillow, soundfile, NumPy); ``glob_files``/``find_files``/``listdir`` to list;
``local_file_for_writing`` for a library that can only write a local file (ArrayRecord); ``is_url``
to tell a bucket from a disk. Objects in a bucket cannot be appended to (``open_file`` refuses).
Buckets and what is not supported there: docs/storage.md. This module is a leaf: it imports
nothing from the package.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` (a bucket or other non-local filesystem)."""
    return bool(_URL.match(os.fspath(path)))


def resolve(path: PathLike) -> Path:
    """An ``epath.Path``: local paths made absolute (``~`` expanded), URLs unchanged."""
    text = os.fspath(path)
    if is_url(text):
        return Path(text)
    return Path(os.path.abspath(os.path.expanduser(text)))


def as_str(path: PathLike) -> str:
    """The string form of ``resolve(path)`` (for libraries that want ``str``)."""
    return os.fspath(resolve(path))


def join(base: PathLike, *parts: str) -> Path:
    return resolve(base).joinpath(*parts)


def exists(path: PathLike) -> bool:
    return resolve(path).exists()


def makedirs(path: PathLike) -> Path:
    p = resolve(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def open_file(path: PathLike, mode: str = "r", encoding: str | None = None) -> IO:
    """Opens a local file or an object in a bucket (text modes default to UTF-8). Appending to
    an object in a bucket is refused: objects are immutable and gcsfs would silently overwrite."""
    if "a" in mode and is_url(path):
        raise ValueError(f"cannot append to {os.fspath(path)}: objects in a bucket are written "
                         "whole (rewrite them, see latentlm_jax/train/metrics.py)")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    p = resolve(path)
    if "b" in mode:
        return p.open(mode)
    return p.open(mode, encoding=encoding)


def has_glob(pattern: PathLike) -> bool:
    return any(ch in os.fspath(pattern) for ch in "*?[")


def glob_files(pattern: PathLike) -> list[str]:
    """Sorted matches of a glob pattern (``**`` included), local or in a bucket; a pattern
    without wildcards gives itself when it exists."""
    text = os.fspath(pattern)
    if not has_glob(text):
        return [as_str(text)] if exists(text) else []
    if not is_url(text):
        return sorted(as_str(p) for p in _glob.glob(os.path.expanduser(text), recursive=True))
    # fsspec, epath's backend for URLs: its glob knows ``**`` (epath's refuses it on buckets)
    fs, scheme = _fsspec(text)
    found = fs.glob(fs._strip_protocol(text), detail=True)
    return sorted(f"{scheme}://{p}" for p, info in found.items() if info.get("type") != "directory")


def find_files(root: PathLike) -> list[str]:
    """Every file under the folder ``root`` (recursively), sorted; empty when there is none."""
    text = os.fspath(root)
    if not is_url(text):
        top = as_str(text)
        return sorted(os.path.join(d, f) for d, _, files in os.walk(top) for f in files)
    fs, scheme = _fsspec(text)
    return sorted(f"{scheme}://{p}" for p in fs.find(fs._strip_protocol(text)))


def _fsspec(url: str) -> tuple[Any, str]:
    """(the fsspec filesystem of ``url``, its scheme)."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(url)
    return fs, url.split("://", 1)[0]


def read_text(path: PathLike) -> str:
    with open_file(path) as f:
        return f.read()


def write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` whole, making the parent folder. Atomic: a local file is written to a
    temporary name and renamed; an object in a bucket appears only once its upload completes."""
    p = resolve(path)
    makedirs(p.parent)
    if is_url(p):
        with open_file(p, "w") as f:
            f.write(text)
        return
    tmp = p.parent / f".{p.name}.tmp-{os.getpid()}"
    with open_file(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, p)


def read_bytes(path: PathLike) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def write_bytes(path: PathLike, data: bytes) -> None:
    p = resolve(path)
    makedirs(p.parent)
    with open_file(p, "wb") as f:
        f.write(data)


def is_dir(path: PathLike) -> bool:
    return resolve(path).is_dir()


def is_file(path: PathLike) -> bool:
    p = resolve(path)
    return p.exists() and not p.is_dir()


def listdir(path: PathLike) -> list[str]:
    """Sorted names in a folder (empty when it does not exist)."""
    p = resolve(path)
    return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def remove(path: PathLike) -> None:
    resolve(path).unlink(missing_ok=True)


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copies one file between any two places (local, bucket), streaming."""
    makedirs(resolve(dst).parent)
    with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=8 << 20)


@contextlib.contextmanager
def local_file_for_writing(path: PathLike) -> Iterator[str]:
    """A local filename for libraries that can only write to the local disk (ArrayRecord's
    writer). Local ``path``: the path itself. URL: a temporary local file, uploaded to ``path``
    when the block ends without an error, then deleted."""
    if not is_url(path):
        makedirs(resolve(path).parent)
        yield as_str(path)
        return
    fd, tmp = tempfile.mkstemp(suffix="-" + resolve(path).name)
    os.close(fd)
    try:
        yield tmp
        copy_file(tmp, path)
    finally:
        os.remove(tmp)
