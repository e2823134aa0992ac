"""Device mesh from config: per-slice (ICI) and across-slice (DCN) sizes per named axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import ml_collections as mlc
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from latentlm_jax.parallel.mesh_check import check_mesh


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Number of TPU slices (1 on GPU/CPU, where DCN parallelism maps onto processes)."""
    ids = {getattr(d, "slice_index", 0) for d in devices}
    return max(len(ids), 1)


def build_mesh(config: mlc.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of ``config.mesh`` over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    axes = tuple(config.mesh.axes)
    slices = num_slices(devices)
    dcn_cfg = math.prod(int(v) for v in config.mesh.dcn.values() if v != -1)
    if slices == 1 and dcn_cfg > 1:
        # GPU / CPU multi-process: DCN parallelism is across processes (hosts).
        slices = jax.process_count()
    ici, dcn = check_mesh(config, len(devices), slices)
    ici_shape = [ici[a] for a in axes]
    dcn_shape = [dcn[a] for a in axes]
    if math.prod(dcn_shape) > 1:
        try:
            grid = mesh_utils.create_hybrid_device_mesh(
                ici_shape, dcn_shape, devices,
                process_is_granule=num_slices(devices) == 1)
        except (TypeError, ValueError, AssertionError):
            grid = _fallback_hybrid(devices, ici_shape, dcn_shape)
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_shape, devices)
        except (ValueError, AssertionError, NotImplementedError):
            grid = np.asarray(devices).reshape(ici_shape)
    return Mesh(grid, axes)


def _fallback_hybrid(devices: Sequence[jax.Device], ici_shape: list[int],
                     dcn_shape: list[int]) -> np.ndarray:
    """Granules = processes in order; axis k of the result has index dcn_k * ici_k + ici_k'."""
    by_process: dict[int, list[jax.Device]] = {}
    for d in devices:
        by_process.setdefault(d.process_index, []).append(d)
    granules = [v for _, v in sorted(by_process.items())]
    arr = np.asarray(granules, dtype=object).reshape(list(dcn_shape) + list(ici_shape))
    n = len(ici_shape)
    order = [i for k in range(n) for i in (k, n + k)]
    return arr.transpose(order).reshape([d * i for d, i in zip(dcn_shape, ici_shape, strict=True)])
