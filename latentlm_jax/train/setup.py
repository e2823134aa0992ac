"""Everything the trainer builds before the first step: mesh, model, shardings, jitted step.

Shared by ``train`` and by ahead-of-time compilation for other topologies (``latentlm bench
memory``), so both compile exactly the same program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from latentlm_jax.parallel.logical import logical_to_mesh_spec
from latentlm_jax.parallel.mesh import build_mesh
from latentlm_jax.train import state as state_lib
from latentlm_jax.train.optimizer import make_optimizer
from latentlm_jax.train.step import make_train_step
from latentlm_jax.train.task import Task
from latentlm_jax.train.tasks import get_task


@dataclasses.dataclass
class TrainSetup:
    config: mlc.ConfigDict
    task: Task
    mesh: Mesh
    tx: optax.GradientTransformation
    graphdef: nnx.GraphDef
    abs_params: dict
    state_shardings: dict
    batch_shardings: dict[str, NamedSharding]
    step_fn: Any  # jitted (state, batch) -> (state, metrics)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abs_params))

    def abstract_state(self) -> dict:
        shapes = jax.eval_shape(
            lambda: state_lib.init_state(self.task, self.config, self.tx, self.state_shardings))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.state_shardings)

    def init_state(self) -> dict:
        return state_lib.init_state(self.task, self.config, self.tx, self.state_shardings)


def batch_shardings(task: Task, config: mlc.ConfigDict, mesh: Mesh) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, logical_to_mesh_spec(names, config.sharding_rules,
                                                        mesh.axis_names))
            for k, names in task.batch_logical_axes(config).items()}


def build_setup(config: mlc.ConfigDict, devices: list) -> TrainSetup:
    task = get_task(config)
    mesh = build_mesh(config, devices)
    tx = make_optimizer(config.train)
    graphdef, abs_params, logical_specs = state_lib.abstract_model(task, config)
    p_shardings = state_lib.param_shardings(abs_params, logical_specs, mesh,
                                            config.sharding_rules)
    s_shardings = state_lib.state_shardings(abs_params, p_shardings, tx, mesh,
                                            ema=config.train.ema_decay > 0)
    b_shardings = batch_shardings(task, config, mesh)
    step_fn = jax.jit(make_train_step(task, config, graphdef),
                      in_shardings=(s_shardings, b_shardings),
                      out_shardings=(s_shardings, None), donate_argnums=(0,))
    return TrainSetup(config, task, mesh, tx, graphdef, abs_params, s_shardings, b_shardings,
                      step_fn)
