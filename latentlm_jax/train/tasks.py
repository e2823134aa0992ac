"""``config.task`` → the Task that builds the model, its loss and its data."""

from __future__ import annotations

import ml_collections as mlc

from latentlm_jax.train.task import Task


def get_task(config: mlc.ConfigDict) -> Task:
    if config.task == "lm":
        from latentlm_jax.train.lm_task import LMTask

        return LMTask()
    if config.task == "vae_image":
        from latentlm_jax.vae.task import ImageVAETask

        return ImageVAETask()
    if config.task == "vae_audio":
        from latentlm_jax.vae.task import AudioVAETask

        return AudioVAETask()
    raise ValueError(f"unknown task {config.task!r}")
