"""Keeps freed host memory for reuse when JAX computes on the CPU (glibc's ``mallopt``).

XLA:CPU allocates every execution's temporaries as one block (2.5 GB for a step of
``configs/bench_ref.py``) and frees it when the execution ends. glibc serves a block that large
with a fresh ``mmap`` — XLA's runtime threads allocate from per-thread arenas, which fall back to
``mmap`` whatever ``M_MMAP_MAX`` says — and returns it with ``munmap``. Every step therefore
page-faults its whole working set back in: 625k minor faults and 1.3 s of kernel time per 5.4 s
step of bench_ref on 2 cores, paid inside the matmuls and elementwise ops that first touch each page
(docs/benchmarks.md, profile finding 8).

:func:`retain_freed_memory` makes every thread allocate from the main arena (``M_ARENA_MAX`` 1),
which grows with ``brk`` (``M_MMAP_MAX`` 0) and is never trimmed (``M_TRIM_THRESHOLD`` −1): a
freed block stays mapped and the next step reuses it without a fault. The price is that the
process keeps its peak heap until it exits, as PyTorch's caching allocators do.

It only changes how the process allocates, never what it computes, and must run before JAX starts
its CPU client (threads that already own an arena keep it), so it does nothing once ``jax`` is
imported. ``latentlm`` calls it first thing; a script that drives the package directly can call it
before importing JAX.
``LATENTLM_HOST_MALLOC=system`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping

ENV_VAR = "LATENTLM_HOST_MALLOC"
CHOICES = ("retain", "system")

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_retained = False


def retained() -> bool:
    """Whether :func:`retain_freed_memory` has set this process's allocator."""
    return _retained


def host_is_the_device(environ: Mapping[str, str]) -> bool:
    """Whether JAX will compute on the host CPU: ``JAX_PLATFORMS`` names ``cpu`` first. Unset
    means an accelerator host (``latentlm`` sets ``cpu`` itself on a host without one)."""
    first = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    return first == "cpu"


def retain_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Sets glibc's allocator to keep and reuse freed memory (module docstring) when JAX is not
    imported yet, the host CPU will be its platform, the C library is glibc, and
    ``LATENTLM_HOST_MALLOC`` is not ``system``. Returns whether it did. An unknown
    ``LATENTLM_HOST_MALLOC`` raises ``ValueError``."""
    environ = os.environ if environ is None else environ
    choice = environ.get(ENV_VAR, "retain").strip().lower() or "retain"
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={environ[ENV_VAR]!r}: expected one of {', '.join(CHOICES)}")
    if choice == "system" or not host_is_the_device(environ):
        return False
    if "jax" in sys.modules:  # its threads may own arenas already: a half-applied setting
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    global _retained
    done = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0),
            libc.mallopt(M_TRIM_THRESHOLD, -1)]
    _retained = all(r == 1 for r in done)
    return _retained
