"""The one path layer: every file the framework reads or writes goes through here.

Local paths and URLs (``gs://bucket/...``, ``s3://``, and whatever ``etils.epath`` — the layer Orbax
itself uses — supports) are handled alike. Nothing here turns a URL into a local path: ``resolve``
makes a *local* path absolute and leaves a URL untouched.

Use ``Path`` (an ``epath.Path``) for joins, ``exists``, ``read_text``/``write_text``, ``mkdir``;
``open_file`` for streams; ``glob_files`` for patterns; ``is_url`` to tell a bucket from a disk.
This module is a leaf: it imports nothing from the package.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from typing import IO

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
    """Opens a local file or an object in a bucket (text modes default to UTF-8)."""
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
        return sorted(_glob.glob(os.path.expanduser(text), recursive=True))
    # Split at the first component with a wildcard: glob from the fixed prefix.
    parts = text.split("/")
    first = next(i for i, part in enumerate(parts) if has_glob(part))
    base = Path("/".join(parts[:first]))
    return sorted(os.fspath(p) for p in base.glob("/".join(parts[first:])))
