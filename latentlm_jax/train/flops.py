"""Model FLOPs and the peak used for MFU.

MFU = achieved model TFLOP/s per device / peak TFLOP/s per device. The peak comes from
``config.metrics.peak_tflops_per_device``; when that is 0 it is measured with a short matmul
calibration in this process (what a CPU can do; accelerator users should set the datasheet peak).

Counts are of matmul FLOPs (2 per multiply-add) as the compiled program computes them: attention
over the full L × L scores (XLA does not skip the causally masked half), the diffusion head on
every slot it runs on (padding slots of gathered targets included). Model FLOPs (the MFU
numerator) are forward + backward; :func:`remat_flops_per_token` is what activation
rematerialisation adds on top (hardware FLOPs, not counted in MFU).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections as mlc

from latentlm_jax.data.target_capacity import head_slots_per_row
from latentlm_jax.modality import latent_dims

# Sinusoidal timestep features fed to the head's timestep MLP (models/diffusion_head.py).
HEAD_FREQ_DIM = 256


def _block_matmul_params(m: mlc.ConfigDict) -> int:
    q = m.emb_dim * m.num_heads * m.head_dim
    kv = 2 * m.emb_dim * m.num_kv_heads * m.head_dim
    o = m.num_heads * m.head_dim * m.emb_dim
    mlp = 3 * m.emb_dim * m.mlp_dim
    return q + kv + o + mlp


def _attention_forward_flops(m: mlc.ConfigDict, seq_len: int) -> float:
    """QK^T and PV of one token against L keys, every layer (full, not causal-halved)."""
    return m.num_layers * 2 * 2 * seq_len * m.num_heads * m.head_dim


def transformer_flops_per_token(m: mlc.ConfigDict, seq_len: int) -> float:
    """Forward + backward FLOPs per token of the decoder and LM head (6·N·T plus attention)."""
    matmul_params = m.num_layers * _block_matmul_params(m) + m.emb_dim * m.vocab_size
    return 6.0 * matmul_params + 3.0 * _attention_forward_flops(m, seq_len)


def remat_flops_per_token(m: mlc.ConfigDict, seq_len: int) -> float:
    """Forward FLOPs per token that ``model.remat_policy`` recomputes in the backward pass:
    "full" the decoder block but its attention-output and MLP-down projections (whose outputs
    the backward never reads), "save_dots" the attention's batched dots, "none" nothing."""
    if m.remat_policy == "full":
        qkv = m.emb_dim * (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        gate_up = 2 * m.emb_dim * m.mlp_dim
        return 2.0 * m.num_layers * (qkv + gate_up) + _attention_forward_flops(m, seq_len)
    if m.remat_policy == "save_dots":
        return float(_attention_forward_flops(m, seq_len))
    return 0.0


def diffusion_head_flops_per_slot(m: mlc.ConfigDict, latent_dim: int) -> float:
    """Forward + backward FLOPs of one modality's head at one slot, all K = batch_mul draws.

    The condition projection of the backbone state runs once per slot; the timestep MLP, the
    input projection, the adaLN blocks and the output run once per draw. Matmuls whose input
    needs no gradient (timestep features, noisy latent) cost forward + weight gradient (2×),
    the rest 3×."""
    w = m.head.width or m.emb_dim
    hidden = max(1, round(w * m.head.mlp_ratio))
    cond = 3 * 2 * m.emb_dim * w
    no_input_grad = 2 * 2 * (HEAD_FREQ_DIM * w + latent_dim * w)  # t_in, x_in
    blocks = m.head.depth * (3 * w * w + 3 * w * hidden)  # adaLN (shift, scale, gate) + SwiGLU
    rest = w * w + 2 * w * w + w * latent_dim  # t_out, final adaLN (shift, scale), out
    per_draw = no_input_grad + 3 * 2 * (blocks + rest)
    return cond + m.diffusion.batch_mul * per_draw


def latentlm_extra_flops_per_row(m: mlc.ConfigDict, seq_len: int) -> float:
    """What a LatentLM adds to the backbone per row: the latent input projections (every
    position, every modality; no input gradient) and each modality's diffusion head."""
    dims = latent_dims(m)
    inputs = sum(2 * 2 * d * m.emb_dim for d in dims.values()) * seq_len
    slots = head_slots_per_row(m, seq_len)
    heads = sum(diffusion_head_flops_per_slot(m, d) for d in dims.values()) * slots
    return inputs + heads


def lm_flops_split(config: mlc.ConfigDict) -> dict[str, float]:
    """The LM task's model FLOPs per step (``LMTask.flops_per_step``) in three parts that sum to
    it: ``backbone`` (decoder and LM-head weight matmuls, 6 per weight per token, and the latent
    input projections), ``attention`` (QKᵀ and PV over the full L × L scores) and ``head`` (every
    modality's diffusion head with its condition projection and K draws)."""
    m = config.model
    rows, seq_len = config.train.global_batch_size, config.data.seq_len
    tokens = rows * seq_len
    attention = 3.0 * _attention_forward_flops(m, seq_len) * tokens
    backbone = transformer_flops_per_token(m, seq_len) * tokens - attention
    dims = latent_dims(m)
    head = 0.0
    if dims:
        slots = head_slots_per_row(m, seq_len) * rows
        head = sum(diffusion_head_flops_per_slot(m, d) for d in dims.values()) * slots
        backbone += latentlm_extra_flops_per_row(m, seq_len) * rows - head
    return {"backbone": backbone, "attention": attention, "head": head}


def calibrate_peak_tflops(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """Measured matmul TFLOP/s of one local device (the CPU's cores are shared by its devices).

    bfloat16 is accumulated in float32 as the model's matmuls are (models/linear.py): XLA:CPU
    upcasts a bf16 dot with a bf16 result to float32, which would halve the "peak" here."""
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((size, size), dt), device)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
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
