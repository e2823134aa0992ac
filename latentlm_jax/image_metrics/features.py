"""The FID Inception over an image set: feature statistics and IS logits."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from latentlm_jax.image_metrics.fid import RunningStats
from latentlm_jax.image_metrics.images import ImageSet, batches
from latentlm_jax.image_metrics.inception import FEATURE_DIM, NUM_CLASSES, FIDInceptionV3, extract


def set_features(model: FIDInceptionV3, images: ImageSet, batch: int,
                 progress: Callable[[int], None] | None = None) -> tuple[RunningStats, np.ndarray]:
    """(statistics of the pool features, IS logits ``[N, 1008]``) of every image of ``images``.
    A short last batch is padded to ``batch`` (the padding's outputs dropped), so one batch shape
    compiles once; a set smaller than ``batch`` is one batch of its own size."""
    stats = RunningStats(FEATURE_DIM)
    logits = []
    full = min(batch, len(images))  # len(): an upper bound for a manifest
    for x in batches(iter(images), full):
        n = x.shape[0]
        if n < full:
            x = np.concatenate([x, np.zeros((full - n, *x.shape[1:]), x.dtype)])
        feats, lg = extract(model, jnp.asarray(x))
        stats.update(np.asarray(feats)[:n])
        logits.append(np.asarray(lg)[:n])
        if progress is not None:
            progress(stats.count)
    out = np.concatenate(logits) if logits else np.zeros((0, NUM_CLASSES), np.float32)
    return stats, out
