"""``config.task`` → the Task that builds the model, its loss and its data.

The table names each task's class by module path, so the trainer imports only the family it runs
and ``train/`` depends on no model family.
"""

from __future__ import annotations

import importlib

import ml_collections as mlc

from latentlm_jax.train.task import Task

TASKS = {
    "lm": "latentlm_jax.lm.task:LMTask",
    "vae_image": "latentlm_jax.vae.task:ImageVAETask",
    "vae_audio": "latentlm_jax.vae.task:AudioVAETask",
}


def get_task(config: mlc.ConfigDict) -> Task:
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; one of {', '.join(TASKS)}")
    module, _, name = TASKS[config.task].partition(":")
    return getattr(importlib.import_module(module), name)(config)
