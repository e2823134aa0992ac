"""``model.attention = "cpu_flash"``: causal, packed-document attention as one fused C++ kernel
per direction on XLA:CPU, through the XLA FFI (``cpu_attention.cc`` beside this file).

The kernel is compiled on first use with the host's C++ compiler (``$CXX``, else ``g++``) against
the headers of the installed jaxlib (``jax.ffi.include_dir()``), for the host's own instruction
set (``-march=native``), and cached by source, compiler flags, jaxlib version and CPU in
``$LATENTLM_KERNEL_CACHE`` (default ``~/.cache/latentlm_jax/kernels``); later runs load the
cached library. ``python -m latentlm_jax.kernels.cpu_attention`` builds it ahead of time and
prints where it is.

Inputs keep the model's [B, L, heads, D] layout (no heads-major transposes); scores, softmax and
both matmuls of a block of query rows stay in cache; the causal upper triangle is skipped. Maths in
float32 (16-bit inputs are upcast at the boundary and gradients rounded back), the same as the
``xla`` implementation to float32 round-off (tests/test_cpu_attention.py). docs/attention.md.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("cpu_attention.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-DNDEBUG")
FORWARD, BACKWARD = "latentlm_cpu_attention_fwd", "latentlm_cpu_attention_bwd"


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled or loaded; the message says why, in one line."""


def cache_dir(environ: dict | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("LATENTLM_KERNEL_CACHE"):
        return Path(env["LATENTLM_KERNEL_CACHE"])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "latentlm_jax" / "kernels"


def _compiler(environ: dict | None = None) -> str:
    env = os.environ if environ is None else environ
    name = env.get("CXX") or "g++"
    found = shutil.which(name)
    if not found:
        raise KernelBuildError(f"model.attention='cpu_flash' compiles a C++ kernel on first use "
                               f"and needs a C++ compiler: {name!r} is not on PATH (set CXX, or "
                               f"install g++; or use model.attention='xla')")
    return found


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and the CPU's model and feature flags."""
    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return platform.machine() + text


def library_path(environ: dict | None = None) -> Path:
    """The cached library for this source, jaxlib, compiler and CPU (not built here)."""
    import jaxlib

    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), jaxlib.__version__.encode(),
                 _compiler(environ).encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir(environ) / f"cpu_attention-{key.hexdigest()[:16]}.so"


def build(environ: dict | None = None) -> Path:
    """Compiles the kernel into the cache unless it is there; returns the library's path."""
    target = library_path(environ)
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelBuildError(f"cannot create the kernel cache {target.parent}: {e.strerror} "
                               f"(set LATENTLM_KERNEL_CACHE to a writable folder)") from e
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    cmd = [_compiler(environ), *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            first = next((ln for ln in done.stderr.splitlines() if "error" in ln),
                         done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
            raise KernelBuildError(f"compiling {SOURCE.name} failed ({' '.join(cmd[:2])} …): "
                                   f"{first.strip()}")
        os.replace(tmp, target)  # atomic: a concurrent build leaves one whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def prepare() -> None:
    """Builds (first time) and registers the kernel, once per process; raises KernelBuildError
    with one line."""
    lib = ctypes.cdll.LoadLibrary(str(build()))
    for name, symbol in ((FORWARD, lib.LatentlmCpuAttentionForward),
                         (BACKWARD, lib.LatentlmCpuAttentionBackward)):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")


def _forward(q, k, v, segment_ids, scale):
    b, length, h, d = q.shape
    return jax.ffi.ffi_call(
        FORWARD, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                  jax.ShapeDtypeStruct((b, h, length), jnp.float32)),
    )(q, k, v, segment_ids, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, segment_ids, scale):
    return _forward(q, k, v, segment_ids, scale)[0]


def _attention_fwd(q, k, v, segment_ids, scale):
    out, lse = _forward(q, k, v, segment_ids, scale)
    return out, (q, k, v, segment_ids, out, lse)


def _attention_bwd(scale, res, dout):
    q, k, v, segment_ids, out, lse = res
    dq, dk, dv = jax.ffi.ffi_call(
        BACKWARD, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                   jax.ShapeDtypeStruct(k.shape, jnp.float32),
                   jax.ShapeDtypeStruct(v.shape, jnp.float32)),
    )(q, k, v, segment_ids, out, lse, dout.astype(jnp.float32), scale=np.float32(scale))
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def check_shapes(q_shape: tuple, k_shape: tuple) -> str | None:
    """Why the kernel cannot take these shapes, or None."""
    if len(q_shape) != 4 or len(k_shape) != 4:
        return f"q, k, v must be [B, L, heads, D]; got {q_shape}, {k_shape}"
    if q_shape[1] != k_shape[1]:
        return f"self-attention only: {q_shape[1]} queries, {k_shape[1]} keys"
    if q_shape[2] % k_shape[2]:
        return f"{q_shape[2]} query heads do not group over {k_shape[2]} KV heads"
    return None


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Causal packed-document attention, q [B, L, H, D], k, v [B, L, K, D] (H % K == 0),
    segment_ids [B, L] (0 = padding: output 0). Returns [B, L, H, D] in q's dtype."""
    why = check_shapes(q.shape, k.shape)
    if why:
        raise ValueError(f"cpu_flash attention: {why}")
    prepare()
    f32 = jnp.float32
    out = _attention(q.astype(f32), k.astype(f32), v.astype(f32), segment_ids.astype(jnp.int32),
                     1.0 / float(q.shape[-1]) ** 0.5)
    return out.astype(q.dtype)


if __name__ == "__main__":
    import sys

    try:
        print(build())
    except KernelBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
