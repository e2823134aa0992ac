"""Generation speed of a LatentLM: latent tokens/s, backbone vs diffusion-head time, and the cost
of one cached decode step at different positions (flat when the KV cache does its job)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax.diffusion import samplers
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.generate.generator import Generator, SamplingOptions
from latentlm_jax.modality import AUDIO, IMAGE
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.models.transformer import init_cache


def _time(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile / warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def decode_step_seconds(model: LatentLM, model_cfg, batch: int, position: int,
                        max_len: int, repeats: int = 20) -> float:
    """One cached backbone step (a single new token) at ``position`` of a ``max_len`` cache."""
    graphdef, params = nnx.split(model, nnx.Param)
    cache = init_cache(model_cfg, batch, max_len)
    cache["valid"] = cache["valid"].at[:, :position].set(True)
    x = jnp.zeros((batch, 1, model_cfg.emb_dim), model.embed.dtype)
    pos = jnp.full((batch, 1), position, jnp.int32)
    valid = jnp.ones((batch, 1), bool)

    @jax.jit
    def step(params, cache):
        m = nnx.merge(graphdef, params)
        return m.decoder.extend(x, pos, valid, cache, jnp.int32(position))

    return _time(lambda: step(params, cache), repeats)


def head_seconds(model: LatentLM, modality: int, batch: int, opts: SamplingOptions,
                 repeats: int = 5) -> float:
    """One latent's solver run on the diffusion head (all steps, with CFG if enabled)."""
    graphdef, params = nnx.split(model, nnx.Param)
    dim = model.dims[modality]
    rows = batch * (2 if opts.cfg_scale != 1.0 else 1)
    h = jnp.ones((rows, model.embed.embedding.shape[1]), jnp.float32)
    schedule = make_schedule("cosine")

    @jax.jit
    def run(params, key):
        head = nnx.merge(graphdef, params).head(modality)

        def fn(x_t, t):
            both = jnp.concatenate([x_t] * (rows // batch), axis=0)
            out = head(both, jnp.broadcast_to(t, (rows,)), h)
            if rows == batch:
                return out
            return out[batch:] + opts.cfg_scale * (out[:batch] - out[batch:])

        return samplers.sample(opts.method, fn, (batch, dim), key, num_steps=opts.steps,
                               schedule=schedule, temperature=opts.temperature)

    return _time(lambda: run(params, jax.random.key(0)), repeats)


def latent_throughput(gen: Generator, modality: int, batch: int, opts: SamplingOptions,
                      prompt: str = "a large red circle in the top left") -> float:
    """Latent tokens generated per second, end to end (prefill included)."""
    gen.text_to_latents([prompt] * batch, modality, jax.random.key(0), opts)  # compile
    t0 = time.perf_counter()
    out = gen.text_to_latents([prompt] * batch, modality, jax.random.key(1), opts)
    return sum(len(z) for z in out) / (time.perf_counter() - t0)


def run_all(model: LatentLM, model_cfg, tokenizer, *, batch: int, image_latents: int,
            opts: SamplingOptions, positions=(64, 512)) -> dict[str, float]:
    modality = IMAGE if IMAGE in model.dims else AUDIO
    gen = Generator(model, model_cfg, tokenizer, image_latents=image_latents or 16)
    out = {"latent_tokens_per_sec": latent_throughput(gen, modality, batch, opts)}
    max_len = max(positions) + 64
    for p in positions:
        out[f"decode_ms_at_{p}"] = 1e3 * decode_step_seconds(model, model_cfg, batch, p, max_len)
    out["head_ms_per_latent"] = 1e3 * head_seconds(model, modality, batch, opts)
    backbone = out[f"decode_ms_at_{positions[0]}"] * (2 if opts.cfg_scale != 1.0 else 1)
    out["backbone_ms_per_latent"] = backbone
    out["head_fraction"] = out["head_ms_per_latent"] / (out["head_ms_per_latent"] + backbone)
    return {k: float(np.asarray(v)) for k, v in out.items()}
