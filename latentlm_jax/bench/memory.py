"""Ahead-of-time compilation of the real train step for a TPU topology, on any machine.

With ``libtpu`` installed (``pip install -e '.[tpu]'``), JAX can describe a TPU topology such as
``v5p:2x4x4`` without the hardware and compile for it. The compiled program's memory analysis says
whether a config fits in HBM before any TPU time is spent.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections as mlc

from latentlm_jax.config.validate import validate
from latentlm_jax.parallel.logical import activation_rules
from latentlm_jax.parallel.mesh_check import check_mesh
from latentlm_jax.train.setup import build_setup

# HBM per chip, GiB (datasheets).
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


def abstract_batch(setup, config: mlc.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global-shape stand-ins for a batch, shaped and typed by the task."""
    dtypes = setup.task.batch_dtypes(config)
    return {key: jax.ShapeDtypeStruct(setup.task.batch_shape(config, key),
                                      dtypes.get(key, jnp.int32), sharding=sharding)
            for key, sharding in setup.batch_shardings.items()}


def compile_for_topology(config: mlc.ConfigDict, topology: str) -> dict[str, float]:
    """Compiles one train step for ``topology`` (e.g. "v5p:2x2x2"); returns per-device GiB."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies

    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    devices = list(desc.devices)
    validate(config)
    check_mesh(config, len(devices))
    setup = build_setup(config, devices)
    with activation_rules(setup.mesh, config.sharding_rules):
        lowered = setup.step_fn.lower(setup.abstract_state(), abstract_batch(setup, config))
    compiled = lowered.compile()
    mem = compiled.memory_analysis()
    gib = 1024**3
    out = {
        "devices": len(devices),
        "params_billion": setup.num_params / 1e9,
        "argument_gib": mem.argument_size_in_bytes / gib,
        "output_gib": mem.output_size_in_bytes / gib,
        "temp_gib": mem.temp_size_in_bytes / gib,
        "generated_code_gib": mem.generated_code_size_in_bytes / gib,
        "alias_gib": mem.alias_size_in_bytes / gib,
    }
    # Donated state aliases its outputs: peak ≈ arguments + temporaries + non-aliased outputs.
    out["peak_gib"] = (out["argument_gib"] + out["temp_gib"] + out["output_gib"]
                       - out["alias_gib"] + out["generated_code_gib"])
    chip = topology.split(":")[0]
    if chip in HBM_GIB:
        out["hbm_gib"] = float(HBM_GIB[chip])
        out["fits"] = float(out["peak_gib"] <= HBM_GIB[chip])
    return out
