"""``DONE`` markers: how the encode and generate stages know that an earlier run is complete.

A marker is written last, atomically, and holds the fingerprint (``key``) of the stage's inputs and
settings; a stage whose marker no longer matches is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from latentlm_jax import paths

DONE = "DONE"


def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able settings."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_marker(directory: str) -> dict[str, Any] | None:
    """The marker's content, or ``None`` when there is none (or it is unreadable)."""
    path = os.path.join(directory, DONE)
    try:
        return json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return None


def write_marker(directory: str, content: Mapping[str, Any]) -> None:
    """Written last, atomically: its presence means everything else in ``directory`` is there."""
    paths.write_text(os.path.join(directory, DONE),
                     json.dumps(dict(content), indent=1, sort_keys=True))


def marker_matches(directory: str, key: str) -> bool:
    """Whether ``directory`` holds a complete stage output made with fingerprint ``key``."""
    marker = read_marker(directory)
    return marker is not None and marker.get("key") == key


def clear_marker(directory: str) -> None:
    """Removes the marker before a stage (re)writes ``directory``."""
    paths.remove(os.path.join(directory, DONE))
