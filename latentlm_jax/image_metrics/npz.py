"""``.npz`` files (weights, reference statistics) read and written through the path layer."""

from __future__ import annotations

import zipfile

import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError


def read_npz(path: str, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; a missing or unreadable file is one line naming
    the path (``what`` says which file it should have been, e.g. "Inception weights")."""
    if not paths.is_file(path):
        raise ConfigError("", f"{what}: no such file: {path}")
    try:
        with paths.open_file(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
                raise ValueError("a single array, not an archive of named arrays")
            with data:
                return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError("", f"{what}: {path} is not a readable .npz file ({exc})") from exc


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` to ``path`` (parent folders made; a bucket object appears whole)."""
    paths.makedirs(paths.resolve(path).parent)
    with paths.open_file(path, "wb") as f:
        np.savez(f, **arrays)
