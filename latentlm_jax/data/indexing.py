"""Random-access index checking shared by the sources."""

from __future__ import annotations

import operator


def check_index(index: int, n: int, what: str = "examples") -> int:
    """``index`` as a non-negative int below ``n`` (negative counts from the end), else
    IndexError naming the source's size."""
    i = operator.index(index)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {index} out of range for {n} {what}")
    return i
