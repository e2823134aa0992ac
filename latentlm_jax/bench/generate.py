"""Generation speed of a LatentLM: the time of one generated span of N latents split into the
backbone-only decode of the same span (N cached steps, no diffusion head) and the head's solver
runs, plus the cost of one cached decode step at different positions (flat when the KV cache does
its job).

Every figure times the Generator's own jitted pieces (``Generator._latent_step``, ``_solve``,
``_feed_latent``) on the rows a real call has (the prompts, plus their unconditional twins with
CFG), so the split adds up to what ``latentlm generate`` pays per span.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax.generate.generator import Generator, SamplingOptions
from latentlm_jax.modality import AUDIO, IMAGE
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.models.transformer import init_cache

PROMPT = "a large red circle in the top left"


def _best(run: Callable[[], float], repeats: int) -> float:
    """The smallest of ``repeats`` timings after one untimed run (compile, warm-up); ``run``
    times itself so that its set-up (a fresh prefilled cache) is not counted."""
    run()
    return min(run() for _ in range(repeats))


def _elapsed(t0: float, out) -> float:
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def span_split(gen: Generator, modality: int, batch: int, opts: SamplingOptions,
               repeats: int = 3, prompt: str = PROMPT) -> dict[str, float]:
    """Seconds per span: ``total`` (the generation loop of ``decode_latents``: solver + backbone
    step per latent), ``backbone`` (the same N backbone steps on the same rows, no head) and
    ``head`` (the N solver runs alone); ``latents`` = N, ``rows`` = batch rows incl. CFG twins."""
    prompts = [prompt] * batch
    graphdef, params = gen.graphdef, gen.params
    dim = gen.cfg.image_latent_dim if modality == IMAGE else gen.cfg.audio_latent_dim
    stream0 = gen.prefill_prompts(prompts, modality, opts)
    rows, guided = int(stream0.h.shape[0]), stream0.guided_rows
    span = [stream0.length]  # audio may end early: the backbone and head loops copy the total's

    def fresh():
        stream = gen.prefill_prompts(prompts, modality, opts)
        jax.block_until_ready(stream.cache)
        return stream

    def total() -> float:
        stream = fresh()
        t0 = time.perf_counter()
        out = gen.decode_latents(stream, modality, jax.random.key(1), opts)
        span[0] = max(len(z) for z in out)
        return _elapsed(t0, out)

    @jax.jit
    def solve(params, h, key):
        return gen._solve(nnx.merge(graphdef, params), modality, opts, h, key, guided)

    def _feed(params, z, cache, start, pos):
        return gen._feed_latent(nnx.merge(graphdef, params), modality, z, cache, start, pos,
                                guided)

    feed = jax.jit(_feed, donate_argnames=("cache",))  # as in _latent_step

    def backbone() -> float:
        stream = fresh()
        h, cache = stream.h, stream.cache
        z = jnp.zeros((stream.n, dim), jnp.float32)
        t0 = time.perf_counter()
        for i in range(span[0]):
            h, cache = feed(params, z, cache, jnp.int32(stream.start + i),
                            jnp.asarray(stream.pos + i))
        return _elapsed(t0, h)

    def head() -> float:
        h = fresh().h
        keys = jax.random.split(jax.random.key(2), span[0])
        t0 = time.perf_counter()
        out = [solve(params, h, keys[i]) for i in range(span[0])]
        return _elapsed(t0, out)

    out = {"total": _best(total, repeats), "backbone": _best(backbone, repeats),
           "head": _best(head, repeats)}
    return {**out, "latents": float(span[0]), "rows": float(rows)}


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

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = step(params, cache)
        return _elapsed(t0, out) / repeats

    return _best(run, 3)


def run_all(model: LatentLM, model_cfg, tokenizer, *, batch: int, image_latents: int,
            opts: SamplingOptions, positions=(64, 512), repeats: int = 3) -> dict[str, float]:
    """The span split (:func:`span_split`) and the decode step at ``positions``."""
    modality = IMAGE if IMAGE in model.dims else AUDIO
    gen = Generator(model, model_cfg, tokenizer, image_latents=image_latents or 16)
    out = span_split(gen, modality, batch, opts, repeats=repeats)
    out["ratio"] = out["total"] / out["backbone"]
    out["latent_tokens_per_sec"] = batch * out["latents"] / out["total"]
    max_len = max(positions) + 64
    for p in positions:
        out[f"decode_ms_at_{p}"] = 1e3 * decode_step_seconds(model, model_cfg, int(out["rows"]),
                                                             p, max_len)
    return {k: float(np.asarray(v)) for k, v in out.items()}
