"""What a point costs, from its config alone: parameters, training FLOPs and items per step.

Parameters are counted on the abstract model (``nnx.eval_shape``: no weights are made); FLOPs per
step are the Task's own count (``Task.flops_per_step``: forward + backward, what MFU counts; for a
LatentLM its diffusion heads with their K draws, train/flops.py), so the sweep, the trainer's MFU
and ``latentlm describe`` agree.
"""

from __future__ import annotations

import copy
import dataclasses

import ml_collections as mlc


@dataclasses.dataclass(frozen=True)
class Measures:
    params: int
    flops_per_step: float
    unit: str  # what a step consumes: "tokens" for an LM, examples for a σ-VAE
    items_per_step: float


def measure(config: mlc.ConfigDict, resolve: bool = True) -> Measures:
    """Counts of ``config`` as ``latentlm train`` would run it (a ``data.latents_dir`` is read
    first, as train does, since it sets the latent dims; ``resolve=False`` skips that)."""
    import jax
    import numpy as np

    from latentlm_jax.data.latents_dir import resolve_latents_dir
    from latentlm_jax.train.state import abstract_model
    from latentlm_jax.train.tasks import get_task

    config = copy.deepcopy(config)  # resolve_latents_dir fills fields in place
    if resolve:
        resolve_latents_dir(config)
    task = get_task(config)
    _, abs_params, _ = abstract_model(task, config)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_params))
    unit, items = task.items_per_step(config)
    return Measures(params, float(task.flops_per_step(config)), unit, float(items))
