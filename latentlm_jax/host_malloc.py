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

:func:`reexec_with_huge_pages` also has that heap backed by transparent huge pages: glibc's
``glibc.malloc.hugetlb=1`` tunable makes malloc ``madvise(MADV_HUGEPAGE)`` what it maps. A step's
few GB of temporaries then need ~500× fewer TLB entries and page faults: the reference train step
got 2–4% faster, float32 and bf16 alike (docs/benchmarks.md, profile finding 17). glibc reads
tunables only at start-up, from ``GLIBC_TUNABLES``, so the ``latentlm`` command re-executes itself
once with it set, before anything else happens. A ``GLIBC_TUNABLES`` that already names
``glibc.malloc.hugetlb`` is left as it is (``glibc.malloc.hugetlb=0`` turns this part off, ``=1``
turns it on where the next paragraph would not).

Not on a VM that hands its free memory back to its host (virtio-balloon *free page reporting*):
there the guest reports every free 2 MB block to the host within seconds, the host discards it,
and a huge page made of such a block is backed again at first touch. On the 2-core VM this
project is developed on, a fresh huge page took 26–34 ms to map (13–15 s per GB) against 0.4 s per
GB on 4 KB pages, so a bench_ref process spent 30–55 s more in the kernel for a step 2% faster
(docs/benchmarks.md, profile finding 20). A timed probe cannot tell: memory freed moments before
(by the previous process) maps fast until the host has taken it back.

Better still is another allocator. Within a step XLA:CPU's YNNPACK matmuls allocate and free
thousands of 64 KB–8 MB scratch buffers (~7,000 per bench_ref step), and after compilation the
kept glibc heap holds ~30,000 free chunks: every such ``malloc`` walks glibc's size-sorted bins,
cache miss after cache miss, 4% of the step's core time in ``_int_malloc`` (profile finding 21).
jemalloc and tcmalloc serve those sizes from per-size caches: the reference step 2–5% faster. So
where the dynamic linker finds one (``libjemalloc.so.2``: Debian/Ubuntu's ``libjemalloc2``;
``libtcmalloc_minimal.so.4``: ``libtcmalloc-minimal4``), the ``latentlm`` command re-executes
itself once with it in ``LD_PRELOAD``, told to keep freed memory as above (jemalloc's
``MALLOC_CONF`` decay times −1, tcmalloc's release rate 0; a value the user set is kept).
``LATENTLM_HOST_MALLOC`` chooses: ``auto`` (the default: jemalloc, else tcmalloc, else glibc as
above), ``jemalloc`` or ``tcmalloc`` (that one, or an error), ``retain`` (glibc), ``system``
(nothing changes), or the path of a jemalloc or tcmalloc library. An allocator already in
``LD_PRELOAD`` (a TPU VM's tcmalloc) is left as it is.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

ENV_VAR = "LATENTLM_HOST_MALLOC"
CHOICES = ("auto", "jemalloc", "tcmalloc", "retain", "system")  # or a library's path


class Allocator(NamedTuple):
    """A malloc that can replace glibc's through ``LD_PRELOAD``."""
    names: tuple[str, ...]  # looked up in the dynamic linker's cache (library_in_linker_cache)
    symbol: str  # defined only by this allocator: a process can tell it is loaded
    settings: dict[str, str]  # environment that makes it keep freed memory (module docstring)
    package: str  # Debian/Ubuntu's package of it, for the error where it is missing


ALLOCATORS = {
    "jemalloc": Allocator(("jemalloc",), "mallctl",
                          {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}, "libjemalloc2"),
    "tcmalloc": Allocator(("tcmalloc_minimal", "tcmalloc"), "tc_malloc",
                          {"TCMALLOC_RELEASE_RATE": "0",
                           # else it prints a line for every allocation over 1 GB (each
                           # step's temporaries)
                           "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50)},
                          "libtcmalloc-minimal4"),
}

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
HUGE_PAGES_ON = f"{HUGE_PAGES_TUNABLE}=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_HUGE_PAGES_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb
VIRTIO_DEVICES = "/sys/bus/virtio/devices"
_VIRTIO_ID_BALLOON = 5  # the virtio spec's device ID of a memory balloon
_VIRTIO_BALLOON_F_REPORTING = 5  # its feature bit: free page reporting

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


def _choice(environ: Mapping[str, str]) -> str:
    value = environ.get(ENV_VAR, "auto").strip() or "auto"
    return value if os.sep in value else value.lower()


def _checked_choice(environ: Mapping[str, str]) -> str:
    """``LATENTLM_HOST_MALLOC``: one of ``CHOICES`` or an existing library's path; otherwise
    ``ValueError`` (one line for the user)."""
    choice = _choice(environ)
    if choice in CHOICES:
        return choice
    if os.sep not in choice:
        raise ValueError(f"{ENV_VAR}={environ[ENV_VAR]!r}: expected one of {', '.join(CHOICES)} "
                         f"or the path of a jemalloc or tcmalloc library")
    if not os.path.isfile(choice):
        raise ValueError(f"{ENV_VAR}={choice!r}: no such file")
    if _kind_of(choice) is None:
        raise ValueError(f"{ENV_VAR}={choice!r}: not a jemalloc or tcmalloc library (by its "
                         f"name)")
    return choice


def _kind_of(library: str) -> str | None:
    """Which of ``ALLOCATORS`` a library path or file name is, by its name."""
    name = os.path.basename(library)
    return next((kind for kind in ALLOCATORS if kind in name), None)


def _preload_entries(environ: Mapping[str, str]) -> list[str]:
    return environ.get("LD_PRELOAD", "").replace(":", " ").split()


def preloaded_allocator(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``LD_PRELOAD`` entry of ``environ`` that is a jemalloc or tcmalloc library, if any."""
    environ = os.environ if environ is None else environ
    return next((e for e in _preload_entries(environ) if _kind_of(e) is not None), None)


def active_allocator() -> str | None:
    """``"jemalloc"`` or ``"tcmalloc"`` when that allocator is this process's malloc (its own
    symbol is defined: it was preloaded, or linked in), else None (glibc's)."""
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    return next((kind for kind, allocator in ALLOCATORS.items()
                 if hasattr(process, allocator.symbol)), None)


# the dynamic linker cache's tag of this machine's 64-bit libraries, as ctypes.util reads it
_LDCONFIG_ABI = {"x86_64": "libc6,x86-64", "ppc64le": "libc6,64bit", "s390x": "libc6,64bit"}


@functools.lru_cache(maxsize=1)
def _linker_cache() -> str:
    """``ldconfig -p``: the libraries the dynamic linker finds by name ("" where unavailable)."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        return subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10,
                              env={"LC_ALL": "C", "LANG": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_in_linker_cache(name: str, cache: str | None = None,
                            machine: str | None = None) -> str | None:
    """The path of ``lib<name>.so…`` in the dynamic linker's cache (``ldconfig -p``) for this
    machine's ABI, or None. One ``ldconfig`` run for every name (``ctypes.util.find_library``
    also tries gcc and ld for each name it misses: ~25 ms a name)."""
    cache = _linker_cache() if cache is None else cache
    machine = platform.machine() if machine is None else machine
    abi = _LDCONFIG_ABI.get(machine, "libc6")
    line = rf"^\s*lib{re.escape(name)}\.so[.\d]*\s+\({re.escape(abi)}[,)][^=]*=>\s*(\S+)"
    match = re.search(line, cache, re.MULTILINE)
    return match.group(1) if match else None


def allocator_to_preload(environ: Mapping[str, str] | None = None, *,
                         find: Callable[[str], str | None] = library_in_linker_cache
                         ) -> tuple[str, str] | None:
    """(kind, library) to put in ``LD_PRELOAD`` (module docstring), or None: the choice is
    ``retain`` or ``system``, the host CPU is not JAX's platform, this is not Linux, an allocator
    is in ``LD_PRELOAD`` already, or (``auto``) none is installed. ``find`` turns a library name
    (``"jemalloc"``) into the library's path or None. A choice that cannot be honoured (unknown,
    or ``jemalloc`` not installed) raises ``ValueError``."""
    environ = os.environ if environ is None else environ
    choice = _checked_choice(environ)
    if choice in ("retain", "system") or not host_is_the_device(environ):
        return None
    if not sys.platform.startswith("linux") or preloaded_allocator(environ) is not None:
        return None
    if os.sep in choice:
        return _kind_of(choice), choice
    for kind in ALLOCATORS if choice == "auto" else (choice,):
        for name in ALLOCATORS[kind].names:
            library = find(name)
            if library:
                return kind, library
    if choice == "auto":
        return None
    raise ValueError(f"{ENV_VAR}={choice}: no {choice} library found (Debian/Ubuntu: apt install "
                     f"{ALLOCATORS[choice].package})")


def retain_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Sets glibc's allocator to keep and reuse freed memory (module docstring) when JAX is not
    imported yet, the host CPU will be its platform, the C library is glibc, and
    ``LATENTLM_HOST_MALLOC`` is not ``system``. Returns whether it did. Not where another
    allocator is this process's malloc (:func:`active_allocator`). An unknown
    ``LATENTLM_HOST_MALLOC`` raises ``ValueError``."""
    environ = os.environ if environ is None else environ
    choice = _checked_choice(environ)
    if choice == "system" or not host_is_the_device(environ):
        return False
    if active_allocator() is not None:
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


def transparent_huge_pages_available(thp_setting: str = THP_SETTING) -> bool:
    """Whether the kernel backs memory that asks for it with transparent huge pages (its setting
    is ``[always]`` or ``[madvise]``, not ``[never]`` or absent)."""
    try:
        with open(thp_setting) as f:
            text = f.read()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


def host_takes_back_free_memory(virtio_devices: str = VIRTIO_DEVICES) -> bool:
    """Whether this is a VM whose virtio memory balloon reports the guest's free pages to the host
    (the device's ``VIRTIO_BALLOON_F_REPORTING`` feature, read from sysfs), so that fresh huge
    pages are slow to map (module docstring)."""
    try:
        names = os.listdir(virtio_devices)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(virtio_devices, name, "device")) as f:
                device = int(f.read().strip(), 16)
            with open(os.path.join(virtio_devices, name, "features")) as f:
                features = f.read().strip()  # one '0' or '1' per feature bit, bit 0 first
        except (OSError, ValueError):
            continue
        if (device == _VIRTIO_ID_BALLOON and len(features) > _VIRTIO_BALLOON_F_REPORTING
                and features[_VIRTIO_BALLOON_F_REPORTING] == "1"):
            return True
    return False


def _glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    if name != "glibc":
        return ()
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def huge_pages_environ(environ: Mapping[str, str] | None = None, *,
                       thp_setting: str = THP_SETTING,
                       virtio_devices: str = VIRTIO_DEVICES) -> dict[str, str] | None:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES`` (module docstring),
    or None where it does not apply: ``LATENTLM_HOST_MALLOC`` is not ``auto`` or ``retain`` (an
    unknown value is :func:`retain_freed_memory`'s error to report), an allocator is in
    ``LD_PRELOAD`` (the tunable is glibc's), the host CPU is not JAX's platform, the C
    library is not glibc 2.35 or newer on Linux, the kernel has no transparent huge pages,
    ``GLIBC_TUNABLES`` already names the tunable, or the host takes back the guest's free memory
    (:func:`host_takes_back_free_memory`)."""
    environ = os.environ if environ is None else environ
    if _choice(environ) not in ("auto", "retain") or preloaded_allocator(environ) is not None:
        return None
    if not host_is_the_device(environ) or not sys.platform.startswith("linux"):
        return None
    if _glibc_version() < _HUGE_PAGES_GLIBC:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES_TUNABLE in tunables or not transparent_huge_pages_available(thp_setting):
        return None
    if host_takes_back_free_memory(virtio_devices):
        return None
    return {**environ,
            "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES_ON}" if tunables else HUGE_PAGES_ON}


def preload_environ(environ: Mapping[str, str] | None = None, *,
                    find: Callable[[str], str | None] = library_in_linker_cache
                    ) -> dict[str, str] | None:
    """``environ`` with :func:`allocator_to_preload`'s library first in ``LD_PRELOAD`` and its
    settings (``ALLOCATORS``) added where the user has not set them, or None."""
    environ = os.environ if environ is None else environ
    chosen = allocator_to_preload(environ, find=find)
    if chosen is None:
        return None
    kind, library = chosen
    settings = ALLOCATORS[kind].settings
    return {**settings, **environ, "LD_PRELOAD": " ".join([library, *_preload_entries(environ)])}


def host_malloc_environ(environ: Mapping[str, str] | None = None, *,
                        find: Callable[[str], str | None] = library_in_linker_cache,
                        thp_setting: str = THP_SETTING,
                        virtio_devices: str = VIRTIO_DEVICES) -> dict[str, str] | None:
    """The environment the ``latentlm`` command re-executes itself with: another allocator
    preloaded (:func:`preload_environ`), else glibc's heap on huge pages
    (:func:`huge_pages_environ`), else None (run on as it is)."""
    environ = os.environ if environ is None else environ
    return (preload_environ(environ, find=find)
            or huge_pages_environ(environ, thp_setting=thp_setting,
                                  virtio_devices=virtio_devices))


def reexec_with_host_malloc(virtio_devices: str = VIRTIO_DEVICES, *,
                            find: Callable[[str], str | None] = library_in_linker_cache) -> None:
    """Replaces this process with the same command, run again with :func:`host_malloc_environ`'s
    environment, where that applies and JAX is not imported yet; otherwise returns. Only for a
    program's first line (the ``latentlm`` command): nothing before it survives. An unknown or
    unavailable ``LATENTLM_HOST_MALLOC`` raises ``ValueError``."""
    environ = host_malloc_environ(find=find, virtio_devices=virtio_devices)
    if environ is None or "jax" in sys.modules:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except OSError:  # cannot re-execute (no interpreter path): run on as it is
        return


def huge_pages(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (this process's: it started with it) has glibc's malloc ask for
    transparent huge pages."""
    environ = os.environ if environ is None else environ
    return HUGE_PAGES_ON in environ.get("GLIBC_TUNABLES", "").split(":")


def describe(environ: Mapping[str, str] | None = None,
             virtio_devices: str = VIRTIO_DEVICES) -> str:
    """How this process allocates host memory, in words (``bench train`` prints it)."""
    environ = os.environ if environ is None else environ
    kind = active_allocator()
    if kind is not None:
        library = preloaded_allocator(environ)
        return kind + (f" ({library})" if library and _kind_of(library) == kind else "")
    text = "retain" if retained() else "system"
    if huge_pages(environ):
        return text + ", huge pages"
    if retained() and host_takes_back_free_memory(virtio_devices):
        text += " (no huge pages: this VM's host takes back free memory, so they map slowly)"
    return text
