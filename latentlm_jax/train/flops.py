"""Model FLOPs and the peak used for MFU.

MFU = achieved model TFLOP/s per device / peak TFLOP/s per device. The peak comes from
``config.metrics.peak_tflops_per_device``; when that is 0 it is measured with a short matmul
calibration in this process (what a CPU can do; accelerator users should set the datasheet peak).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections as mlc


def transformer_flops_per_token(m: mlc.ConfigDict, seq_len: int) -> float:
    """Forward + backward FLOPs per token of the decoder and LM head (6·N·T plus attention)."""
    q = m.emb_dim * m.num_heads * m.head_dim
    kv = 2 * m.emb_dim * m.num_kv_heads * m.head_dim
    o = m.num_heads * m.head_dim * m.emb_dim
    mlp = 3 * m.emb_dim * m.mlp_dim
    per_layer = q + kv + o + mlp
    matmul_params = m.num_layers * per_layer + m.emb_dim * m.vocab_size
    # QK^T and PV: 2 matmuls of L × head_dim per head per token (full, not causal-halved).
    attention = m.num_layers * 2 * 2 * seq_len * m.num_heads * m.head_dim
    return 6.0 * matmul_params + 3.0 * attention


def calibrate_peak_tflops(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """Measured matmul TFLOP/s of one local device (the CPU's cores are shared by its devices)."""
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((size, size), dt), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    tflops = 2 * size**3 / best / 1e12
    if device.platform == "cpu":
        tflops /= jax.local_device_count()  # host "devices" share the same cores
    return tflops
