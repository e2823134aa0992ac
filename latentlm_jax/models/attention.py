"""Causal, packed-document attention with grouped KV heads, in three interchangeable
implementations chosen by ``model.attention`` (docs/attention.md):

- ``xla``: explicit float32 scores [B, K, G, L, L] under an additive mask, heads-major with a
  hand-written backward (:mod:`latentlm_jax.models.attention_core`); :func:`dot_product_attention`
  is the plain reference it is tested against, and what decoding uses.
- ``dot_product``: :func:`jax.nn.dot_product_attention` with ``is_causal`` and a boolean
  same-document mask; cuDNN's fused (flash) kernel on GPU for bf16/f16, XLA elsewhere.
- ``splash``: the Pallas splash-attention kernel (TPU only) with segment ids and a causal mask,
  under ``shard_map`` over the mesh's batch, heads and length axes; no [L, L] array exists.
- ``cpu_flash``: a fused C++ kernel for XLA:CPU (:mod:`latentlm_jax.kernels.cpu_attention`,
  through the XLA FFI), under ``shard_map`` over batch and heads; the same maths as ``xla``.

Every implementation returns zeros at padding queries (segment id 0), as the reference does.

Context parallelism: activations' ``length`` dimension may be sharded over a mesh axis (the
``("length", "context")`` rule). Queries stay length-sharded; keys and values are constrained to
be whole along length, so XLA all-gathers them over that axis (``xla``/``dot_product``); the
splash kernel gets its share of query blocks with the matching part of the causal mask.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.models import attention_core
from latentlm_jax.parallel.logical import (
    constrain,
    current_rules,
    logical_to_mesh_spec,
    target_platform,
)

IMPLEMENTATIONS = ("xla", "dot_product", "splash", "cpu_flash")
_NEG_INF = -1e30  # large finite negative: fully-masked rows stay NaN-free
_SPLASH_BLOCKS = (512, 256, 128)  # tile sizes tried, largest first; 128 = the TPU lane width
# xla on CPU: causal block skipping in at most this many query blocks of at least this many rows
# (L = 256: 4 blocks of 64, 5.4% off the text-only bench step; 8 blocks of 32 gain nothing).
_CPU_QUERY_BLOCKS, _CPU_MIN_QUERY_BLOCK = 4, 64


# --- the reference ("xla") ----------------------------------------------------------------

def attention_mask(q_segment: jax.Array, kv_segment: jax.Array, q_pos: jax.Array,
                   kv_pos: jax.Array, causal: bool = True) -> jax.Array:
    """[B, 1, Lq, Lk] boolean mask: same non-padding segment and, if causal, key index ≤ query
    index.

    ``q_pos``/``kv_pos`` are indices in the row (or cache), not per-document positions.
    """
    same = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] > 0)
    if causal:
        same = same & (kv_pos[:, None, :] <= q_pos[:, :, None])
    return same[:, None, :, :]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q [B, Lq, H, D]; k, v [B, Lk, K, D] with H % K == 0; mask
    [B, 1, Lq, Lk]. Softmax in float32; returns [B, Lq, H, D] in q's dtype."""
    b, lq, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    qg = q.reshape(b, lq, kh, g, d)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k).astype(jnp.float32) / jnp.sqrt(d).astype(
        jnp.float32)
    scores = jnp.where(mask[:, :, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, :, None, :, :], probs, 0.0).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(b, lq, h, d)


# --- the one entry point ------------------------------------------------------------------

def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                   implementation: str = "xla") -> jax.Array:
    """Causal attention within packed documents. q [B, L, H, D]; k, v [B, L, K, D] (H % K == 0);
    segment_ids [B, L], 0 = padding (attends to nothing, output 0). Returns [B, L, H, D]."""
    if implementation == "splash":
        out = splash_attention(q, k, v, segment_ids)
        return constrain(out, ("batch", "length", "act_heads", "head_dim"))
    if implementation == "cpu_flash":
        out = cpu_flash_attention(q, k, v, segment_ids)
        return constrain(out, ("batch", "length", "act_heads", "head_dim"))
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError("model.attention", f"must be one of {', '.join(IMPLEMENTATIONS)}; "
                                             f"got {implementation!r}")
    # Context parallelism: queries keep their length sharding, keys and values are gathered.
    k = constrain(k, ("batch", None, "act_kv_heads", "head_dim"))
    v = constrain(v, ("batch", None, "act_kv_heads", "head_dim"))
    kv_segment = constrain(segment_ids, ("batch", None))
    if implementation == "xla":
        out = _zero_padding(attention_core.attention(
            q, k, v, attention_core.causal_bias(segment_ids, kv_segment),
            query_block=causal_query_block(q.shape[1])), segment_ids)
    else:
        # Boolean same-document mask; causality comes from is_causal (cuDNN skips the blocks).
        same = segment_ids[:, None, :, None] == kv_segment[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True,
                                           implementation=_dot_product_backend(q))
        out = _zero_padding(out, segment_ids)
    return constrain(out, ("batch", "length", "act_heads", "head_dim"))


def causal_query_block(length: int) -> int | None:
    """Rows per query block of the ``xla`` implementation's causal block skipping, or None.

    Only on CPU, where it is measured (docs/benchmarks.md, profile finding 10), and only when
    the sequence is whole on every device: with context parallelism queries are length-sharded
    and slicing them would move data between devices."""
    if target_platform() != "cpu" or _length_shards() > 1:
        return None
    for blocks in range(_CPU_QUERY_BLOCKS, 1, -1):
        if length % blocks == 0 and length // blocks >= _CPU_MIN_QUERY_BLOCK:
            return length // blocks
    return None


def _length_shards() -> int:
    ctx = current_rules()
    if ctx is None:
        return 1
    mesh, rules = ctx
    spec = logical_to_mesh_spec(("length",), rules, mesh.axis_names)
    return math.prod(mesh.shape[a] for a in _axes(spec[0] if len(spec) else None))


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     implementation: str = "xla") -> jax.Array:
    """Attention of a chunk q [B, T, H, D] over a KV cache k, v [B, S, K, D] with an explicit
    boolean mask [B, 1, T, S] (decoding). ``xla`` is the reference; ``dot_product`` and
    ``splash`` use :func:`jax.nn.dot_product_attention` (a chunk of T ≪ S queries has no [L, L]
    matrix to avoid, and the splash kernel needs whole 128-row tiles); ``cpu_flash`` decodes with
    the reference (its kernel is for self-attention of whole sequences). Queries that see no key
    return 0, as in the reference."""
    if implementation in ("xla", "cpu_flash"):
        return dot_product_attention(q, k, v, mask)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None)
    seen = jnp.any(mask, axis=(1, 3))  # [B, T]
    return jnp.where(seen[:, :, None, None], out, 0)


def _zero_padding(out: jax.Array, segment_ids: jax.Array) -> jax.Array:
    return jnp.where((segment_ids > 0)[:, :, None, None], out, 0)


def _dot_product_backend(q: jax.Array) -> str | None:
    """cuDNN's fused kernel on GPU for 16-bit inputs (it supports no float32); XLA otherwise."""
    if target_platform() in ("gpu", "cuda") and q.dtype in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return None


# --- splash (TPU) ---------------------------------------------------------------------------

_INTERPRET = False


@contextlib.contextmanager
def splash_interpreted() -> Iterator[None]:
    """Within this context the splash kernel runs in Pallas interpret mode on any backend (slow;
    for the tests, which check it against the reference on CPU)."""
    global _INTERPRET
    prev, _INTERPRET = _INTERPRET, True
    try:
        yield
    finally:
        _INTERPRET = prev


def _block_size(local_len: int) -> int:
    for b in _SPLASH_BLOCKS:
        if local_len % b == 0:
            return b
    raise ConfigError("data.seq_len", f"splash attention needs the per-device sequence length "
                                      f"({local_len}) to be a multiple of 128")


@functools.lru_cache(maxsize=32)
def _splash_kernel(num_heads: int, length: int, block: int, head_shards: int,
                   q_seq_shards: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(num_heads)])
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    # Concrete mask tables (not tracers of whichever trace first asked), so they can be cached.
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=head_shards,
                                  q_seq_shards=q_seq_shards, interpret=interpret)


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     segment_ids: jax.Array) -> jax.Array:
    """:func:`self_attention` by the Pallas splash kernel; shapes as there."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (
        SegmentIds,
    )

    platform = target_platform()
    if platform != "tpu" and not _INTERPRET:
        raise ConfigError("model.attention", f"'splash' runs only on TPU, not on {platform}; "
                                             f"use 'dot_product' or 'xla'")
    b, length, h, d = q.shape
    kh = k.shape[2]
    # The kernel does not scale the logits; the query is scaled in float32 (exact for powers of 4).
    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(d))).astype(q.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, heads, L, D]
    ctx = current_rules()
    if ctx is None:
        mesh, q_spec = None, PartitionSpec()
        head_shards = seq_shards = 1
    else:
        mesh, rules = ctx
        q_spec = logical_to_mesh_spec(("batch", "act_heads", "length", "head_dim"), rules,
                                      mesh.axis_names)
        q_spec = PartitionSpec(*q_spec, *([None] * (4 - len(q_spec))))
        head_shards = math.prod(mesh.shape[a] for a in _axes(q_spec[1]))
        seq_shards = math.prod(mesh.shape[a] for a in _axes(q_spec[2]))
    if h % head_shards:
        head_shards, q_spec = 1, PartitionSpec(q_spec[0], None, q_spec[2], None)
    if kh % head_shards:
        # KV heads do not split like the query heads: give every query head its own KV head.
        k, v = (jnp.repeat(x, h // kh, axis=1) for x in (k, v))
    if length % seq_shards:
        raise ConfigError("data.seq_len", f"{length} does not split over {seq_shards} "
                                          f"context shards")
    kernel = _splash_kernel(h, length, _block_size(length // seq_shards), head_shards,
                            seq_shards, _INTERPRET)

    def local(kern, q, k, v, q_seg, kv_seg):  # one example at a time, all local heads
        return jax.vmap(kern, in_axes=(0, 0, 0, SegmentIds(0, 0)))(
            q, k, v, SegmentIds(q_seg, kv_seg))

    if mesh is None:
        out = local(kernel, q, k, v, segment_ids, segment_ids)
    else:
        kv_spec = PartitionSpec(q_spec[0], q_spec[1], None, None)
        kernel_spec = kernel.manual_sharding_spec(
            NamedSharding(mesh, PartitionSpec(q_spec[1], q_spec[2])))
        out = jax.shard_map(
            local, mesh=mesh,
            in_specs=(kernel_spec, q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0], q_spec[2]),
                      PartitionSpec(q_spec[0], None)),
            out_specs=q_spec, check_vma=False,
        )(kernel, q, k, v, segment_ids, segment_ids)
    return _zero_padding(jnp.swapaxes(out, 1, 2), segment_ids)


# --- cpu_flash (XLA:CPU) --------------------------------------------------------------------

def cpu_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                        segment_ids: jax.Array) -> jax.Array:
    """:func:`self_attention` by the fused C++ kernel of :mod:`latentlm_jax.kernels.cpu_attention`
    (CPU only); shapes as there. Under a mesh it runs per device in ``shard_map``: batch and heads
    may be sharded, the length may not."""
    from latentlm_jax.kernels import cpu_attention

    platform = target_platform()
    if platform != "cpu":
        raise ConfigError("model.attention", f"'cpu_flash' runs only on CPU, not on {platform}; "
                                             f"use 'splash' (TPU), 'dot_product' or 'xla'")
    why = cpu_attention.check_shapes(q.shape, k.shape)
    if why:
        raise ConfigError("model.attention", f"'cpu_flash': {why}")
    try:
        cpu_attention.prepare()
    except cpu_attention.KernelBuildError as e:
        raise ConfigError("model.attention", str(e)) from e
    ctx = current_rules()
    if ctx is None or ctx[0].size == 1:
        return cpu_attention.attention(q, k, v, segment_ids)
    mesh, rules = ctx
    names = mesh.axis_names
    q_spec = logical_to_mesh_spec(("batch", "length", "act_heads", "head_dim"), rules, names)
    q_spec = PartitionSpec(*q_spec, *([None] * (4 - len(q_spec))))
    kv_spec = logical_to_mesh_spec(("batch", "length", "act_kv_heads", "head_dim"), rules, names)
    kv_spec = PartitionSpec(*kv_spec, *([None] * (4 - len(kv_spec))))
    if any(math.prod(mesh.shape[a] for a in _axes(s[1])) > 1 for s in (q_spec, kv_spec)):
        raise ConfigError("model.attention", "'cpu_flash' needs whole sequences on every device "
                                             "(no context parallelism); use 'xla'")
    q_heads = math.prod(mesh.shape[a] for a in _axes(q_spec[2]))
    kv_heads = math.prod(mesh.shape[a] for a in _axes(kv_spec[2]))
    if q_spec[2] != kv_spec[2] and kv_heads > 1:
        raise ConfigError("model.attention", "'cpu_flash': query and KV heads must be sharded "
                                             "over the same mesh axes")
    if q_heads > 1 and kv_heads == 1:
        k, v = (jnp.repeat(x, q.shape[2] // k.shape[2], axis=2) for x in (k, v))
        kv_spec = PartitionSpec(kv_spec[0], None, q_spec[2], None)
    q_spec = PartitionSpec(q_spec[0], None, q_spec[2], None)
    kv_spec = PartitionSpec(kv_spec[0], None, kv_spec[2], None)
    return jax.shard_map(cpu_attention.attention, mesh=mesh,
                         in_specs=(q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0], None)),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
