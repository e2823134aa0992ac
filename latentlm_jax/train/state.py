"""Train state as plain pytrees (dicts of arrays) and its shardings, derived from logical names.

The state is ``{"step": int32[], "params": {...}, "opt_state": optax state, "nonfinite": {...}}``
(plus ``"ema"`` when ``train.ema_decay`` > 0). ``nonfinite`` holds the non-finite step guard's int32
counters (train/step.py): ``skipped`` (all such steps so far), ``run`` (in a row, up to the last
step) and ``halt_step`` (the step that must stop the run, 0 = none). Parameters live as a
pure dict (``nnx.to_pure_dict``) so the same tree goes to jit, optax and Orbax unchanged; the model
is rebuilt inside the step with ``nnx.merge(graphdef, params)``.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from latentlm_jax.parallel.logical import logical_names_tree, logical_to_mesh_spec
from latentlm_jax.train.task import Task

log = logging.getLogger(__name__)

NONFINITE_COUNTERS = ("skipped", "run", "halt_step")


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec) or x is None


def abstract_model(task: Task, config: mlc.ConfigDict) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, abstract params as a pure dict, logical PartitionSpecs as a pure dict)."""
    model = nnx.eval_shape(lambda: task.build_model(config, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leftovers = jax.tree.leaves(rest)
    if leftovers:
        raise ValueError("models may hold only nnx.Param variables in training; found other "
                         f"state: {jax.tree.map(lambda x: x.shape, rest)}")
    specs = nnx.to_pure_dict(logical_names_tree(params))
    return graphdef, nnx.to_pure_dict(params), specs


def param_shardings(abs_params: dict, logical_specs: dict, mesh: Mesh,
                    rules: Any) -> dict:
    """NamedShardings of every parameter. A mesh axis that does not divide its dimension is dropped
    for that parameter (logged), so odd sizes degrade to replication instead of failing."""

    def one(shape_dtype, spec):
        mesh_spec = logical_to_mesh_spec(spec, rules, mesh.axis_names)
        fixed = []
        for dim, axes in zip(shape_dtype.shape, tuple(mesh_spec) + (None,) * (
                len(shape_dtype.shape) - len(mesh_spec)), strict=True):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            size = 1
            for a in names:
                size *= mesh.shape[a]
            if names and dim % size:
                log.warning("dimension %d of a %s parameter %s does not divide over mesh axes "
                            "%s; replicating it", dim, shape_dtype.shape, spec, names)
                names = ()
            fixed.append(None if not names else names[0] if len(names) == 1 else names)
        return NamedSharding(mesh, PartitionSpec(*fixed))

    return jax.tree.map(one, abs_params, logical_specs, is_leaf=lambda x: _is_spec(x)
                        or isinstance(x, jax.ShapeDtypeStruct))


def state_shardings(abs_params: dict, p_shardings: dict, tx: optax.GradientTransformation,
                    mesh: Mesh, ema: bool = False) -> dict:
    """Shardings of the whole train state: optimizer moments follow their parameters."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abs_opt = jax.eval_shape(tx.init, abs_params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abs_opt, p_shardings,
        transform_non_params=lambda _: replicated)
    out = {"step": replicated, "params": p_shardings, "opt_state": opt_shardings,
           "nonfinite": {k: replicated for k in NONFINITE_COUNTERS}}
    if ema:
        out["ema"] = p_shardings
    return out


def init_state(task: Task, config: mlc.ConfigDict, tx: optax.GradientTransformation,
               shardings: dict) -> dict:
    """Initialises the train state directly into its shardings (no host-side full copy)."""

    def init(key):
        model = task.build_model(config, nnx.Rngs(key))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "nonfinite": {k: jnp.zeros((), jnp.int32) for k in NONFINITE_COUNTERS}}
        if "ema" in shardings:
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of ``tree``'s arrays held on each device (addressable shards)."""
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
