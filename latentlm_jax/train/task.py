"""What the generic trainer needs to know about a model family (LM, image σ-VAE, audio σ-VAE).

The trainer (``latentlm_jax/train/trainer.py``) owns the mesh, the optimizer, jit, checkpoints and
metrics; a :class:`Task` owns the model, its loss and its data. ``config.task`` picks the task
through :func:`latentlm_jax.train.tasks.get_task` (each task is built from the config once) -
behaviour comes from config, not from model names. The trainer knows nothing of any model family.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


class DataIterator(Protocol):
    """An iterator of host-local batches (dicts of NumPy arrays) whose position can be saved."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...
    def close(self) -> None:
        """Stops background readers (Grain workers, prefetch threads); called when training ends."""


class Task(Protocol):
    def build_model(self, config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        """Creates the model; every parameter carries logical axis names."""

    def loss_fn(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """Scalar loss to minimise and a dict of scalar metrics (logged as-is), traced under jit."""

    def batch_logical_axes(self, config: mlc.ConfigDict) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of every batch entry, e.g. {"tokens": ("batch", "length")}."""

    def batch_dtypes(self, config: mlc.ConfigDict) -> dict[str, Any]:
        """Dtype of every batch entry that is not int32 (tokens, ids and positions are)."""

    def batch_shape(self, config: mlc.ConfigDict, key: str) -> tuple[int, ...]:
        """Global shape of batch entry ``key`` (for abstract batches and AOT compiles)."""

    def train_iterator(self, config: mlc.ConfigDict, process_index: int,
                       process_count: int) -> DataIterator:
        """This process's shard of the training stream (per-process rows of the global batch)."""

    def flops_per_step(self, config: mlc.ConfigDict) -> float:
        """Model FLOPs of one optimizer step over the global batch (forward + backward)."""

    def items_per_step(self, config: mlc.ConfigDict) -> tuple[str, float]:
        """Throughput unit and count per step, e.g. ("tokens", B * L) or ("examples", B)."""

    def evaluate(self, model: nnx.Module, config: mlc.ConfigDict, workdir: str,
                 step: int) -> dict[str, float]:
        """Optional eval at ``train.eval_every``: returns scalar metrics, may write samples."""
