"""Token-by-token generation over mixed text / latent sequences with a KV cache.

* text → latents (text→image, text→audio): the prompt ``<bos> caption <boi>`` is prefilled, then
  each next latent is sampled by a diffusion solver on the modality's head, conditioned on the last
  hidden state, and fed back through the latent input projection. Image spans have a fixed length;
  audio spans end when the LM head prefers ``<eoa>`` to ``<latent>`` (or at a maximum).
* latents → text (captioning, transcription): ``<bos> <boi> z… <eoi>`` is prefilled, then text is
  sampled (temperature / top-k / top-p) until ``<eos>``.

Classifier-free guidance runs the conditional stream (with the caption) and the unconditional stream
(caption dropped, as in training) as separate rows of one batch, so each has its own cache rows and
both advance in one call: ε = ε_u + s·(ε_c − ε_u).

One latent is one jitted call: the whole solver loop (``lax.scan`` over the steps) on the head,
then the backbone step that feeds the new latent back, with the KV cache donated. The head's adaLN
modulations depend on the hidden state and the timestep only, so they are computed for every
solver step at once before the loop (one batched matmul per head layer instead of one small one
per step); the loop itself runs the x-dependent part only (``DiffusionHead.apply_modulated``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax.diffusion import samplers
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.generate.text_sampling import sample_tokens
from latentlm_jax.modality import (
    AUDIO,
    IMAGE,
    MODALITY_NAMES,
    delimiter_ids,
    latent_dims,
    max_latent_dim,
)
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.models.transformer import init_cache

# The largest table of precomputed adaLN modulations (all solver steps × rows) per latent; past
# it (e.g. 1000-step DDPM on a big batch) each step computes its own, as ``DiffusionHead`` does.
MODULATION_BUDGET_BYTES = 256 * 2**20


@dataclasses.dataclass
class LatentStream:
    """A prefilled prompt batch, ready to decode latents: the last hidden states (conditional
    rows, then ``guided_rows`` unconditional ones), the cache, and where the next latent goes."""

    h: jax.Array
    cache: dict
    start: int  # cache row of the next latent
    pos: np.ndarray  # [R] its position per row
    n: int  # prompts (conditional rows)
    guided_rows: int
    length: int  # latents to generate (the maximum, for audio)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    method: str = "dpm++2m"  # ddpm | ddim | dpm++2m
    steps: int = 20
    cfg_scale: float = 3.0
    temperature: float = 1.0  # latent sampling temperature (initial / injected noise scale)
    text_temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    max_text_tokens: int = 64
    max_audio_latents: int = 64


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pads token rows to one length: (tokens, valid, positions), positions from 0 per row."""
    n = max(len(r) for r in rows)
    tokens = np.full((len(rows), n), pad_id, np.int32)
    valid = np.zeros((len(rows), n), bool)
    positions = np.zeros((len(rows), n), np.int32)
    for i, r in enumerate(rows):
        tokens[i, n - len(r):] = r
        valid[i, n - len(r):] = True
        positions[i, n - len(r):] = np.arange(len(r))
    return tokens, valid, positions


class Generator:
    """Wraps a trained :class:`LatentLM`; all per-token work runs in jitted functions."""

    def __init__(self, model: LatentLM, model_cfg, tokenizer, *, image_latents: int = 0,
                 modulation_budget_bytes: int = MODULATION_BUDGET_BYTES):
        self.modulation_budget_bytes = modulation_budget_bytes
        self.cfg = model_cfg
        self.tok = tokenizer
        self.image_latents = image_latents
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self.schedule = make_schedule(model_cfg.diffusion.schedule)
        self.prediction = model_cfg.diffusion.prediction

    # -- jitted pieces ------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0,), donate_argnames=("cache",))
    def _prefill(self, params, tokens, modality, latents, valid, positions, cache):
        model = nnx.merge(self.graphdef, params)
        x = model.embed_inputs(tokens, modality, latents)
        h, cache = model.decoder.extend(x, positions, valid, cache, jnp.int32(0))
        return h[:, -1], cache

    @functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=("guided_rows",),
                       donate_argnames=("cache",))
    def _latent_step(self, modality: int, opts: SamplingOptions, params, h, cache, start, pos,
                     key, *, guided_rows: int):
        """Samples the next latent for every row from hidden states h [R, E] (cond rows first,
        then ``guided_rows`` unconditional rows when guidance is on), feeds it back. The LM
        logits (audio: end of span or not) are computed for audio only."""
        model = nnx.merge(self.graphdef, params)
        z = self._solve(model, modality, opts, h, key, guided_rows)
        h2, cache = self._feed_latent(model, modality, z, cache, start, pos, guided_rows)
        logits = model.logits(h2[:, None])[:, 0] if modality == AUDIO else None
        return z, h2, logits, cache

    def _solve(self, model: LatentLM, modality: int, opts: SamplingOptions, h: jax.Array,
               key: jax.Array, guided_rows: int) -> jax.Array:
        """The solver loop on the head for one latent of every conditional row: [n, D]."""
        head = model.head(modality)
        n = h.shape[0] - guided_rows  # conditional rows
        grid = samplers.sampling_grid(opts.method, self.schedule, opts.steps)
        table_bytes = (opts.steps * h.shape[0] * head.x_in.kernel.shape[1]
                       * (3 * len(head.blocks) + 2) * jnp.dtype(head.dtype).itemsize)
        if table_bytes <= self.modulation_budget_bytes:
            mods = head.modulations(h, grid)  # every step's adaLN, once per latent

            def joint_fn(x_t, t, i):  # every row of h: the conditional, then the unconditional
                return head.apply_modulated(x_t, tuple(m[i] for m in mods))
        else:
            def joint_fn(x_t, t, i):
                return head(x_t, jnp.broadcast_to(t, (x_t.shape[0],)), h)

        eps_fn = samplers.batched_cfg_model_fn(joint_fn, opts.cfg_scale) if guided_rows \
            else joint_fn
        return samplers.sample(opts.method, eps_fn, (n, model.dims[modality]), key,
                               num_steps=opts.steps, schedule=self.schedule,
                               temperature=opts.temperature, prediction=self.prediction,
                               step_indexed=True)

    @staticmethod
    def _feed_latent(model: LatentLM, modality: int, z: jax.Array, cache: dict,
                     start: jax.Array, pos: jax.Array, guided_rows: int):
        """One cached backbone step on the latents z [n, D] (repeated for the unconditional
        rows): the next hidden states [R, E] and the cache."""
        feed = jnp.concatenate([z, z], axis=0) if guided_rows else z
        x = model.latent_in[MODALITY_NAMES[modality]](feed)[:, None, :].astype(model.embed.dtype)
        valid = jnp.ones((feed.shape[0], 1), bool)
        h2, cache = model.decoder.extend(x, pos[:, None], valid, cache, start)
        return h2[:, 0], cache

    @functools.partial(jax.jit, static_argnums=(0, 1), donate_argnames=("cache",))
    def _text_step(self, opts: SamplingOptions, params, h, cache, start, pos, key):
        model = nnx.merge(self.graphdef, params)
        logits = model.logits(h[:, None])[:, 0]
        token = sample_tokens(key, logits, temperature=opts.text_temperature, top_k=opts.top_k,
                              top_p=opts.top_p)
        x = model.embed(token[:, None])
        valid = jnp.ones((token.shape[0], 1), bool)
        h2, cache = model.decoder.extend(x, pos[:, None], valid, cache, start)
        return token, h2[:, 0], cache

    # -- public API ---------------------------------------------------------------------------
    def text_to_latents(self, prompts: list[str], modality: int, key: jax.Array,
                        opts: SamplingOptions | None = None) -> list[np.ndarray]:
        """One latent sequence [N_i, D] (normalised space) per prompt."""
        opts = opts or SamplingOptions()
        return self.decode_latents(self.prefill_prompts(prompts, modality, opts), modality, key,
                                   opts)

    def prefill_prompts(self, prompts: list[str], modality: int,
                        opts: SamplingOptions) -> LatentStream:
        """Prefills ``<bos> caption <begin>`` per prompt (and ``<bos> <begin>`` per prompt for
        the unconditional rows when guidance is on)."""
        t = self.tok
        begin, _ = delimiter_ids(modality)
        rows = [[t.bos_id, *t.encode(p), begin] for p in prompts]
        guided = opts.cfg_scale != 1.0
        if guided:
            rows += [[t.bos_id, begin]] * len(prompts)
        length = self.image_latents if modality == IMAGE else opts.max_audio_latents
        return self.prefill_rows(rows, len(prompts), guided, length)

    def prefill_rows(self, rows: list[list[int]], n: int, guided: bool,
                     length: int) -> LatentStream:
        """Prefills token ``rows`` (left-padded): ``n`` conditional rows, then (``guided``) their
        ``n`` unconditional twins, with cache room for a span of ``length`` latents."""
        tokens, valid, positions = left_pad(rows, self.tok.pad_id)
        r, p = tokens.shape
        cache = init_cache(self.cfg, r, p + length + 1)
        h, cache = self._prefill(self.params, jnp.asarray(tokens), None, None, jnp.asarray(valid),
                                 jnp.asarray(positions), cache)
        return LatentStream(h, cache, p, positions[:, -1] + 1, n, n if guided else 0, length)

    def decode_latents(self, stream: LatentStream, modality: int, key: jax.Array,
                       opts: SamplingOptions) -> list[np.ndarray]:
        """Generates the span of a prefilled stream (its cache is consumed). Image latents stay
        on the device until the span ends (no host sync per latent); audio reads the LM head's
        end-of-span choice after each latent."""
        t = self.tok
        n, h, cache = stream.n, stream.h, stream.cache
        out, done = [], np.zeros(n, bool)
        ends = np.full(n, stream.length)
        for i in range(stream.length):
            key, sub = jax.random.split(key)
            z, h, logits, cache = self._latent_step(
                modality, opts, self.params, h, cache, jnp.int32(stream.start + i),
                jnp.asarray(stream.pos + i), sub, guided_rows=stream.guided_rows)
            out.append(z)
            if modality == AUDIO:
                # Stop where the LM head prefers ending the span to another latent.
                logits = np.asarray(logits[:n])
                stop = logits[:, t.eoa_id] > logits[:, t.latent_id]
                newly = stop & ~done
                ends[newly] = i + 1
                done |= stop
                if done.all():
                    break
        stacked = np.asarray(jnp.stack(out, axis=1))  # [n, steps, D]
        return [stacked[j, : ends[j]] for j in range(n)]

    def latents_to_text(self, latents: list[np.ndarray], modality: int, key: jax.Array,
                        opts: SamplingOptions | None = None) -> list[str]:
        """Captions / transcriptions for latent sequences (normalised space)."""
        opts = opts or SamplingOptions()
        t = self.tok
        begin, end = delimiter_ids(modality)
        dim = latent_dims(self.cfg)[modality]
        width = max_latent_dim(self.cfg)
        rows = [[t.bos_id, begin, *([t.latent_id] * len(z)), end] for z in latents]
        tokens, valid, positions = left_pad(rows, t.pad_id)
        r, p = tokens.shape
        mod = np.zeros((r, p), np.int8)
        lat = np.zeros((r, p, width), np.float32)
        for i, z in enumerate(latents):
            s = p - len(z) - 1
            mod[i, s: s + len(z)] = modality
            lat[i, s: s + len(z), :dim] = z
        cache = init_cache(self.cfg, r, p + opts.max_text_tokens)
        h, cache = self._prefill(self.params, jnp.asarray(tokens), jnp.asarray(mod),
                                 jnp.asarray(lat), jnp.asarray(valid), jnp.asarray(positions),
                                 cache)
        pos = positions[:, -1] + 1
        ids: list[list[int]] = [[] for _ in range(r)]
        finished = np.zeros(r, bool)
        for i in range(opts.max_text_tokens):
            key, sub = jax.random.split(key)
            token, h, cache = self._text_step(opts, self.params, h, cache, jnp.int32(p + i),
                                              jnp.asarray(pos + i), sub)
            token = np.asarray(token)
            for j in range(r):
                if not finished[j]:
                    if token[j] == t.eos_id:
                        finished[j] = True
                    else:
                        ids[j].append(int(token[j]))
            if finished.all():
                break
        return [t.decode(x) for x in ids]
