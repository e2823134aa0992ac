"""The mesh settings against the devices: fill ``-1`` axes, check sizes and batch divisibility.

Kept beside the mesh (not in ``config/``) because it needs the devices; every failure is a
one-line :class:`ConfigError` naming the field, raised before anything compiles.
"""

from __future__ import annotations

import math

import ml_collections as mlc

from latentlm_jax.config.loading import ConfigError


def resolve_mesh(config: mlc.ConfigDict, num_devices: int, num_slices: int = 1
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """Fills ``-1`` axes and checks that ICI × DCN sizes multiply to the device count."""
    axes = tuple(config.mesh.axes)
    if num_devices % num_slices:
        raise ConfigError("mesh", f"{num_devices} devices do not split into {num_slices} slices")
    per_slice = num_devices // num_slices
    out = []
    for level, total in (("ici", per_slice), ("dcn", num_slices)):
        sizes = {a: int(config.mesh[level][a]) for a in axes}
        known = math.prod(s for s in sizes.values() if s != -1)
        fill = [a for a, s in sizes.items() if s == -1]
        if fill:
            if total % known:
                raise ConfigError(f"mesh.{level}.{fill[0]}",
                                  f"cannot fill: {total} devices not divisible by {known}")
            sizes[fill[0]] = total // known
        if math.prod(sizes.values()) != total:
            shape = " × ".join(f"{a}={s}" for a, s in sizes.items())
            what = "devices per slice" if level == "ici" else "slices"
            raise ConfigError(f"mesh.{level}", f"{shape} = {math.prod(sizes.values())} but "
                                               f"there are {total} {what}")
        out.append(sizes)
    return out[0], out[1]


def data_parallel_size(ici: dict[str, int], dcn: dict[str, int]) -> int:
    """Devices that split the batch: the product of the mesh axes named by the "batch" rule."""
    return math.prod(ici.get(a, 1) * dcn.get(a, 1) for a in ("data", "fsdp"))


def check_mesh(config: mlc.ConfigDict, num_devices: int, num_slices: int = 1
               ) -> tuple[dict[str, int], dict[str, int]]:
    ici, dcn = resolve_mesh(config, num_devices, num_slices)
    dp = data_parallel_size(ici, dcn)
    micro = config.train.global_batch_size // config.train.grad_accum_steps
    if micro % dp:
        raise ConfigError("train.global_batch_size",
                          f"{config.train.global_batch_size} (per micro-step {micro}) is not "
                          f"divisible by the data-parallel size {dp} (data × fsdp)")
    m = config.model
    tensor = ici.get("tensor", 1) * dcn.get("tensor", 1)
    if config.task == "lm" and m.num_kv_heads % tensor and m.num_heads % tensor:
        raise ConfigError("model.num_heads", f"neither num_heads={m.num_heads} nor num_kv_heads="
                                             f"{m.num_kv_heads} divide over tensor={tensor}")
    if config.task == "lm":
        check_context(config, ici.get("context", 1) * dcn.get("context", 1))
    return ici, dcn


def check_context(config: mlc.ConfigDict, context: int) -> None:
    """Sequences split evenly over the "context" axis; the splash kernel needs whole 128-row
    tiles on each device."""
    seq_len = config.data.seq_len
    if seq_len % context:
        raise ConfigError("data.seq_len", f"{seq_len} does not split over context={context} "
                                          f"(mesh.ici.context × mesh.dcn.context)")
    if config.model.attention == "cpu_flash" and context > 1:
        raise ConfigError("model.attention", f"'cpu_flash' needs whole sequences on every "
                                             f"device; context={context} splits them (use 'xla')")
    if config.model.attention == "splash" and (seq_len // context) % 128:
        raise ConfigError("data.seq_len", f"splash attention needs seq_len / context "
                                          f"({seq_len} / {context}) to be a multiple of 128")
