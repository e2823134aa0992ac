"""Input-pipeline throughput against what the training step consumes.

Three figures per source: random-access reads of the raw source (examples/s), the whole Grain
pipeline up to packed per-process batches (documents/s, tokens/s), and the train step of the same
config (tokens/s it consumes). The pipeline must outrun the step by a wide margin (≥ 10×), or the
accelerators wait on data (visible in training as ``data_wait_frac``).
"""

from __future__ import annotations

import time

import jax
import ml_collections as mlc
import numpy as np

from latentlm_jax.data.bad_input import (
    BadInputPolicy,
    SkippingSource,
    SkipTotals,
    pop_skip_counts,
)


def raw_source_rate(config: mlc.ConfigDict, n: int = 1000, seed: int = 0,
                    skipped: SkipTotals | None = None) -> float:
    """Examples/s of random-access reads from the configured source; bad examples follow
    ``data.bad_input`` (counted into ``skipped``, or a :class:`DataError`)."""
    from latentlm_jax.data.pipeline import make_source

    policy = BadInputPolicy(config.data.bad_input)
    source = SkippingSource(make_source(config), policy)
    idx = np.random.default_rng(seed).integers(0, len(source), size=n)
    source[int(idx[0])]
    t0 = time.perf_counter()
    for i in idx:
        source[int(i)]
    rate = n / (time.perf_counter() - t0)
    if skipped is not None:
        skipped.add(policy.counts())
    return rate


def pipeline_rate(config: mlc.ConfigDict, num_batches: int = 50, warmup: int = 3,
                  skipped: SkipTotals | None = None, **encoders) -> dict[str, float]:
    """Documents/s, tokens/s (non-padding positions) and batches/s of the full pipeline; the
    bad examples it skipped are added to ``skipped``."""
    from latentlm_jax.data.pipeline import build_train_iterator

    skipped = SkipTotals() if skipped is None else skipped
    it = build_train_iterator(config, process_index=0, process_count=1, **encoders)
    for _ in range(warmup):
        skipped.add(pop_skip_counts(next(it)))
    docs = tokens = 0
    t0 = time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
        skipped.add(pop_skip_counts(batch))
        seg = batch["segment_ids"]
        tokens += int((seg > 0).sum())
        docs += int(seg.max(axis=1).sum())
    dt = time.perf_counter() - t0
    return {"documents_per_sec": docs / dt, "tokens_per_sec": tokens / dt,
            "batches_per_sec": num_batches / dt}


def train_step_rate(config: mlc.ConfigDict, steps: int = 10) -> float:
    """Tokens/s the train step of ``config`` consumes on this machine (all local devices)."""
    from latentlm_jax.data.pipeline import build_train_iterator
    from latentlm_jax.parallel.logical import activation_rules
    from latentlm_jax.train.setup import build_setup
    from latentlm_jax.train.trainer import to_global_batch

    setup = build_setup(config, jax.devices())
    it = build_train_iterator(config, process_index=0, process_count=1)
    batch = to_global_batch(next(it), setup.batch_shardings)
    state = setup.init_state()
    with activation_rules(setup.mesh, config.sharding_rules):
        step = setup.step_fn.lower(state, batch).compile()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    return config.train.global_batch_size * config.data.seq_len / dt
