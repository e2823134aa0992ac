"""Loading trained models back from a run's workdir or an export (for generate, encode, eval, the
demo and ``latentlm export``).

Only the weights are read: from a training checkpoint, the ``params`` or ``ema`` subtree of the
train state (an Orbax partial restore; the optimizer moments are never read), from an export
(``latentlm export``, docs/export.md) its params-only checkpoint. Either way they are restored
straight into their shardings on the mesh asked for (one device by default): each device reads its
own shards, nothing is gathered onto one host first.

A model is built to run on the platform it is loaded onto: a run trained with an attention kernel
that platform lacks (``model.attention = "splash"``, TPU only) runs with ``dot_product``, the same
mathematics, and :func:`load_model` says so in one line (docs/export.md).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from latentlm_jax import paths
from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.train import state as state_lib
from latentlm_jax.train.tasks import get_task

EXPORT_FILE = "export.json"  # what marks a directory as an export, and what it holds
PARAMS_DIR = "params"  # the export's Orbax checkpoint of the weights alone
EXPORT_FORMAT = "latentlm-export/1"


def load_run_config(workdir: str) -> mlc.ConfigDict:
    """The resolved config a run wrote to ``WORKDIR/config.json``. Fields added to the framework
    after the run was made take their defaults, which keep the behaviour it was trained with, so
    every command (generate, encode, eval, reconstruct) reads older runs alike. In an export, the
    files it carries (tokenizer, σ-VAEs, latent statistics) are named relative to it; they come
    back as paths inside ``workdir``, wherever the export was moved to."""
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        raise ConfigError("", f"{workdir} holds no config.json: is it a latentlm workdir?")
    config = mlc.ConfigDict(json.loads(paths.read_text(path)))
    _fill_missing(config, base_config())
    info = export_info(workdir)
    if info is not None:
        for field, rel in info.get("files", {}).items():
            section, key = field.split(".")
            config[section][key] = str(paths.join(workdir, rel))
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
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def export_info(workdir: str) -> dict[str, Any] | None:
    """``WORKDIR/export.json`` of an export (its step, weights, dtype, carried files), or None
    for a training workdir."""
    path = paths.join(workdir, EXPORT_FILE)
    if not paths.exists(path):
        return None
    return json.loads(paths.read_text(path))


def _manager(workdir: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(paths.join(workdir, "checkpoints"),
                                 item_names=("state", "data"))


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps a training workdir holds checkpoints of (an export: its one step)."""
    info = export_info(workdir)
    if info is not None:
        return [int(info["step"])]
    if not paths.exists(paths.join(workdir, "checkpoints")):
        return []
    with _manager(workdir) as manager:
        return sorted(manager.all_steps())


def latest_step(workdir: str) -> int | None:
    steps = checkpoint_steps(workdir)
    return steps[-1] if steps else None


def has_ema(config: mlc.ConfigDict) -> bool:
    """Whether a run's checkpoints hold EMA weights (the trainer keeps them when decay > 0)."""
    return config.train.ema_decay > 0


def inference_mesh(config: mlc.ConfigDict, devices: list | None = None) -> Mesh:
    """A mesh with the run's axis names over ``devices`` (default: the first local device), all
    of them on the ``fsdp`` axis: the weights are spread over every device that holds them,
    each as the run's ``sharding_rules`` say (an axis that does not divide a dimension drops)."""
    devices = list(jax.local_devices()[:1] if devices is None else devices)
    axes = tuple(config.mesh.axes)
    shape = [len(devices) if a == "fsdp" else 1 for a in axes]
    if "fsdp" not in axes:
        shape[0] = len(devices)
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), axes)


def inference_devices(spec: str | int) -> list:
    """The local devices ``--devices`` names: a count N (the first N) or ``all``."""
    local = jax.local_devices()
    if str(spec) == "all":
        return local
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError("", f"--devices must be a positive count or 'all'; got {spec!r}")
    if n > len(local):
        raise ConfigError("", f"--devices {n}: this host has only {len(local)} "
                              f"{local[0].platform} device{'s' if len(local) > 1 else ''}")
    return local[:n]


# Attention kernels that exist only on some platforms, and what runs in their place elsewhere.
PLATFORM_ATTENTION = {"splash": (("tpu",), "dot_product"),
                      "cpu_flash": (("cpu",), "dot_product")}


def runnable_config(config: mlc.ConfigDict, platform: str) -> mlc.ConfigDict:
    """``config``, or a copy of it whose ``model.attention`` exists on ``platform`` (splash →
    dot_product off TPU, cpu_flash → dot_product off CPU: an inference-time choice of kernel
    with the same weights and mathematics, announced on stderr). Training keeps the strict
    error."""
    used = config.model.attention
    if used not in PLATFORM_ATTENTION or platform in PLATFORM_ATTENTION[used][0]:
        return config
    instead = PLATFORM_ATTENTION[used][1]
    print(f"attention: the run used {used!r} ({', '.join(PLATFORM_ATTENTION[used][0]).upper()} "
          f"only); running it with {instead!r} on {platform}", file=sys.stderr, flush=True)
    config = config.copy_and_resolve_references()
    config.model.attention = instead
    return config


def abstract_params(config: mlc.ConfigDict, mesh: Mesh, dtype: Any = None
                    ) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, the weights as ShapeDtypeStructs carrying their NamedShardings on ``mesh``),
    in ``dtype`` when given (else the model's own)."""
    graphdef, abs_params, specs = state_lib.abstract_model(get_task(config), config)
    shardings = state_lib.param_shardings(abs_params, specs, mesh, config.sharding_rules)
    return graphdef, jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, dtype or a.dtype, sharding=s),
        abs_params, shardings)


def load_params(workdir: str, *, step: int | None = None, use_ema: bool | None = True,
                config: mlc.ConfigDict | None = None, mesh: Mesh | None = None,
                dtype: Any = None) -> tuple[nnx.GraphDef, dict, mlc.ConfigDict, int, str]:
    """(graphdef, weights, config, step, ``"ema"`` | ``"raw"``) of a run or an export, restored
    sharded onto ``mesh`` (default: one local device) in ``dtype`` (default: as stored).

    ``use_ema``: True = the EMA weights when the run kept them (else the raw ones), None = the
    EMA weights and an error when there are none, False = the raw weights."""
    config = load_run_config(workdir) if config is None else config
    mesh = inference_mesh(config) if mesh is None else mesh
    info = export_info(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise ConfigError("", f"no checkpoint in {workdir}/checkpoints")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise ConfigError("", f"{workdir} has no checkpoint at step {step} (it has "
                              f"{', '.join(map(str, steps))})")
    if info is not None:
        weights = info["weights"]
        if use_ema is False and weights == "ema":
            raise ConfigError("", f"{workdir} is an export of the EMA weights; it holds no raw "
                                  "ones (export the run with --no-ema for those)")
        if use_ema is None and weights != "ema":
            raise ConfigError("", f"{workdir} is an export of the raw weights; it holds no EMA")
        stored = None if info["dtype"] == "mixed" else jnp.dtype(info["dtype"])
        graphdef, target = abstract_params(config, mesh, dtype or stored)
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            params = ckptr.restore(paths.join(workdir, PARAMS_DIR),
                                   args=ocp.args.StandardRestore(target))
        return graphdef, params, config, step, weights
    if use_ema is None and not has_ema(config):
        raise ConfigError("", f"{workdir} kept no EMA weights (train.ema_decay = 0); use the raw "
                              "ones (--no-ema)")
    weights = "ema" if use_ema is not False and has_ema(config) else "raw"
    key = "ema" if weights == "ema" else "params"
    graphdef, target = abstract_params(config, mesh, dtype)
    item = {key: target}
    try:
        with _manager(workdir) as manager:  # only this subtree is read: no optimizer moments
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True)))
    except (KeyError, ValueError, FileNotFoundError, OSError) as e:  # damaged on disk
        earlier = [s for s in steps if s < step]
        hint = (f"use --step {earlier[-1]} (an earlier one)" if earlier
                else "it is the only checkpoint: train again")
        why = str(e).splitlines()[0][:160] if str(e) else ""
        raise ConfigError("", f"the checkpoint at step {step} of {workdir} cannot be read "
                              f"({type(e).__name__}: {why}); it is damaged or incomplete: "
                              f"{hint}") from None
    return graphdef, restored["state"][key], config, step, weights


def load_model(workdir: str, *, step: int | None = None, use_ema: bool = True,
               config: mlc.ConfigDict | None = None, mesh: Mesh | None = None
               ) -> tuple[nnx.Module, mlc.ConfigDict, int]:
    """(model, config, step) from the latest (or given) checkpoint of a run, or from an export;
    EMA weights when kept. The weights live on ``mesh`` (default: one local device), sharded by
    the run's rules; the model and the config returned use an attention kernel that the mesh's
    platform has (:func:`runnable_config`)."""
    config = load_run_config(workdir) if config is None else config
    mesh = inference_mesh(config) if mesh is None else mesh
    config = runnable_config(config, mesh.devices.flat[0].platform)
    graphdef, params, config, step, _ = load_params(workdir, step=step, use_ema=use_ema,
                                                    config=config, mesh=mesh)
    return nnx.merge(graphdef, params), config, step
