"""Ahead-of-time compilation of the real train step for a TPU topology, on any machine.

With ``libtpu`` installed (``pip install -e '.[tpu]'``), JAX can describe a TPU topology such as
``v5p:2x4x4`` — or several slices of it, joined by DCN — without the hardware and compile for it.
The compiled program's memory analysis says whether a config fits in HBM, and its cost analysis
how many FLOPs one step computes, before any TPU time is spent. When XLA's TPU compiler itself
runs out of HBM it refuses to compile; that is reported as "does not fit" with its figures.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.parallel.logical import activation_rules
from latentlm_jax.parallel.mesh_check import check_mesh
from latentlm_jax.train.setup import build_setup

# HBM per chip, GiB (datasheets).
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}
GIB = 1024**3

_ACCELERATOR_NAMES = {"v5e": "v5litepod"}  # topology chip name → TPU_ACCELERATOR_TYPE prefix
_TOPOLOGY = re.compile(r"^[a-z0-9]+:\d+(x\d+)*$")
# XLA's TPU compiler, when the program needs more HBM than the chip has:
# "RESOURCE_EXHAUSTED: ... the total memory required ... (240.65G) exceeds available HBM (95.74G)"
_OOM = re.compile(r"\(([\d.]+)([KMGT]?)\)\s+exceeds available HBM\s+\(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1 / GIB, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


def abstract_batch(setup, config: mlc.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global-shape stand-ins for a batch, shaped and typed by the task."""
    dtypes = setup.task.batch_dtypes(config)
    return {key: jax.ShapeDtypeStruct(setup.task.batch_shape(config, key),
                                      dtypes.get(key, jnp.int32), sharding=sharding)
            for key, sharding in setup.batch_shardings.items()}


def topology_devices(topology: str, slices: int = 1) -> list:
    """Compile-only devices of ``slices`` TPU slices of ``topology`` (e.g. "v5p:4x4x4")."""
    if not _TOPOLOGY.match(topology):
        raise ConfigError("target_topology", f"expected a TPU topology like 'v5p:4x4x4', got "
                                             f"{topology!r}")
    if slices < 1:
        raise ConfigError("target_slices", f"must be ≥ 1, got {slices}")
    # No chip is touched: skip libtpu's metadata-server query and worker discovery (which print
    # errors off a TPU VM), and its one-process-per-host lock (compiles may run side by side).
    chip = topology.split(":")[0]
    settings = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                "TPU_ACCELERATOR_TYPE": f"{_ACCELERATOR_NAMES.get(chip, chip)}-8",
                "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    from jax.experimental import topologies

    kwargs = {"num_slices": slices} if slices > 1 else {}
    # Only while libtpu starts: left in os.environ, TPU_WORKER_HOSTNAMES would make this process
    # (and every child it starts) look like a host of a TPU pod to jax.distributed.
    added = {k: v for k, v in settings.items() if k not in os.environ}
    os.environ.update(added)
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs)
    except Exception as e:  # libtpu's message for an unknown chip or shape
        raise ConfigError("target_topology", f"{topology!r}: {' '.join(str(e).split())}") from e
    finally:
        for key in added:
            os.environ.pop(key, None)
    return list(desc.devices)


def hbm_exhausted(error: BaseException) -> tuple[float, float] | None:
    """(required GiB, available GiB) from XLA's out-of-HBM compile error, else None."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    match = _OOM.search(text)
    if not match:
        return (float("nan"), float("nan"))
    need, nu, have, hu = match.groups()
    return float(need) * _UNITS[nu], float(have) * _UNITS[hu]


def compile_for_topology(config: mlc.ConfigDict, topology: str = "", slices: int = 0
                         ) -> dict[str, Any]:
    """Compiles one train step of ``config`` for ``slices`` × ``topology`` (default: the
    config's ``target_topology`` × ``target_slices``) and returns per-device GiB, "fits", the
    FLOPs of one step over all devices (XLA's count and the analytic count MFU uses)."""
    topology = topology or config.target_topology
    if not topology:
        raise ConfigError("target_topology", "names no TPU topology: set it in the config or "
                                             "pass --topology (e.g. v5p:4x4x4)")
    slices = slices or int(config.target_slices)
    devices = topology_devices(topology, slices)
    validate(config)
    check_mesh(config, len(devices), slices)
    t0 = time.perf_counter()
    setup = build_setup(config, devices)
    chip = topology.split(":")[0]
    out: dict[str, Any] = {
        "topology": topology, "slices": slices, "devices": len(devices),
        "params_billion": setup.num_params / 1e9,
        "mesh": {a: int(s) for a, s in setup.mesh.shape.items()},
        "analytic_flops": float(setup.task.flops_per_step(config)),
        "recompute_flops": float(getattr(setup.task, "recompute_flops_per_step",
                                         lambda c: 0.0)(config)),
    }
    if chip in HBM_GIB:
        out["hbm_gib"] = float(HBM_GIB[chip])
    with activation_rules(setup.mesh, config.sharding_rules):
        lowered = setup.step_fn.lower(setup.abstract_state(), abstract_batch(setup, config))
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax's JaxRuntimeError; only the out-of-HBM kind is an answer
        exhausted = hbm_exhausted(e)
        if exhausted is None:
            raise
        out["peak_gib"], out["hbm_gib"] = exhausted
        out["fits"], out["refused_by_xla"] = False, True
        out["compile_s"] = time.perf_counter() - t0
        out["xla_flops"] = hlo_flops(config)
        return out
    out["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    for key, value in (("argument", mem.argument_size_in_bytes),
                       ("output", mem.output_size_in_bytes),
                       ("alias", mem.alias_size_in_bytes),
                       ("temp", mem.temp_size_in_bytes),
                       ("generated_code", mem.generated_code_size_in_bytes)):
        out[f"{key}_gib"] = value / GIB
    # Donated state aliases its outputs: peak ≈ arguments + temporaries + non-aliased outputs.
    out["peak_gib"] = (out["argument_gib"] + out["temp_gib"] + out["output_gib"]
                       - out["alias_gib"] + out["generated_code_gib"])
    if "hbm_gib" in out:
        out["fits"] = out["peak_gib"] <= out["hbm_gib"]
    # The TPU executable's cost analysis counts a while loop's body once (the layer scan), and
    # even unscanned it gave ~0.7 of the dots' FLOPs (lm_1b, v5p:2x2x2): kept for reference only;
    # xla_flops is the figure to compare with the analytic count.
    out["tpu_cost_flops"] = compiled_flops(compiled) * len(devices)
    del compiled, lowered, setup
    gc.collect()
    out["xla_flops"] = hlo_flops(config)
    return out


def hlo_flops(config: mlc.ConfigDict) -> float:
    """FLOPs of one train step over the global batch, by XLA's cost analysis of the step's HLO
    lowered for one host CPU device with the layers unrolled: the same model, loss, remat and
    optimizer as the TPU program, before partitioning, with every layer counted (XLA counts a
    scanned body once). The splash and cpu_flash kernels are counted as XLA attention (full
    scores): XLA cannot see into them."""
    c = mlc.ConfigDict(config.to_dict())
    c.model.scan_layers = False
    if c.model.attention in ("splash", "cpu_flash"):
        c.model.attention = "xla"
    for level in ("ici", "dcn"):
        for axis in c.mesh[level]:
            c.mesh[level][axis] = 1
    setup = build_setup(c, jax.devices("cpu")[:1])
    with activation_rules(setup.mesh, c.sharding_rules):
        lowered = setup.step_fn.lower(setup.abstract_state(), abstract_batch(setup, c))
    cost = lowered.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def compiled_flops(compiled) -> float:
    """FLOPs of one device's program, from XLA's cost analysis (0 when it gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def config_family(path: str) -> list[str]:
    """The arguments ``path:<arg>`` accepts, from the config file's ``SIZES`` table."""
    spec = importlib.util.spec_from_file_location("_latentlm_family", path)
    if spec is None or not os.path.isfile(path):
        raise ConfigError("", f"config file not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sizes = getattr(module, "SIZES", None)
    if not isinstance(sizes, dict) or not sizes:
        raise ConfigError("", f"{path} has no SIZES table to prove as a family; pass --sizes")
    return list(sizes)
