"""Loading trained models back from a run's workdir (for generate, encode, eval and the demo)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections as mlc
import orbax.checkpoint as ocp
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.train.setup import TrainSetup, build_setup


def load_run_config(workdir: str) -> mlc.ConfigDict:
    """The resolved config a run wrote to ``WORKDIR/config.json``. Fields added to the framework
    after the run was made take their defaults, which keep the behaviour it was trained with, so
    every command (generate, encode, eval, reconstruct) reads older runs alike."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError("", f"{workdir} holds no config.json: is it a latentlm workdir?")
    with open(path, encoding="utf-8") as f:
        config = mlc.ConfigDict(json.load(f))
    _fill_missing(config, base_config())
    return config


def _fill_missing(config: mlc.ConfigDict, defaults: mlc.ConfigDict) -> None:
    """Adds, recursively and in place, every field of ``defaults`` that ``config`` lacks."""
    for key, default in defaults.items():
        if key not in config:
            with config.unlocked():
                config[key] = default
        elif isinstance(default, mlc.ConfigDict) and isinstance(config[key], mlc.ConfigDict):
            _fill_missing(config[key], default)


def save_run_config(config: mlc.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))


def latest_step(workdir: str) -> int | None:
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        return None
    with ocp.CheckpointManager(directory, item_names=("state", "data")) as manager:
        return manager.latest_step()


def single_device_setup(config: mlc.ConfigDict) -> TrainSetup:
    """The run's setup on one local device (inference does not need the training mesh)."""
    config = mlc.ConfigDict(config.to_dict())
    for axis in config.mesh.axes:
        config.mesh.ici[axis] = 1
        config.mesh.dcn[axis] = 1
    with config.unlocked():
        config.train.grad_accum_steps = 1
        config.train.global_batch_size = 1
    return build_setup(config, jax.local_devices()[:1])


def load_model(workdir: str, *, step: int | None = None, use_ema: bool = True,
               config: mlc.ConfigDict | None = None) -> tuple[nnx.Module, mlc.ConfigDict, int]:
    """(model, config, step) from the latest (or given) checkpoint; EMA weights when kept."""
    config = load_run_config(workdir) if config is None else config
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise ConfigError("", f"no checkpoint in {workdir}/checkpoints")
    setup = single_device_setup(config)
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    with ocp.CheckpointManager(directory, item_names=("state", "data")) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(setup.abstract_state())))
    state = restored["state"]
    params = state["ema"] if use_ema and "ema" in state else state["params"]
    return nnx.merge(setup.graphdef, params), config, step
