"""Logical axis names -> mesh axes (the MaxText convention), for parameters and activations.

Every parameter is created through :func:`param`, which records a tuple of *logical* axis names
(``("embed", "mlp")``) on the ``nnx.Param``. A table of rules held in the config,
``((logical_name, mesh_axes), ...)``, maps each logical name onto zero, one or several mesh axes.
The same table constrains activations through :func:`constrain`.

Flax's own metadata key for these names has changed between releases (``sharding_names`` became
``out_sharding``), so this module is the only place that touches it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalNames = tuple[str | None, ...]
Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def param(
    init_fn: Callable[..., jax.Array],
    key: jax.Array,
    shape: Sequence[int],
    names: LogicalNames,
    dtype: Any = jnp.float32,
) -> nnx.Param:
    """Creates an ``nnx.Param`` of ``shape`` whose axes carry the logical ``names``."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {names} do not match shape {tuple(shape)}")
    value = init_fn(key, tuple(shape), dtype)
    # Placement is done by jit out_shardings at init, never eagerly at construction.
    return nnx.Param(value, sharding_names=tuple(names), eager_sharding=False)


def logical_names_tree(state: Any) -> Any:
    """PartitionSpecs of *logical* names for every variable of an nnx state (None where absent)."""
    return nnx.get_partition_spec(state)


def logical_to_mesh_spec(names: Sequence[str | None] | PartitionSpec | None, rules: Rules,
                         mesh_axes: Sequence[str] | None = None) -> PartitionSpec:
    """Maps logical axis names to a mesh PartitionSpec.

    For each logical name the first rule naming it wins; a mesh axis already used by an earlier
    dimension is skipped (a mesh axis may shard at most one dimension), and mesh axes absent from
    ``mesh_axes`` (when given) or of size 1 are simply kept - size-1 axes shard nothing.
    """
    if names is None:
        return PartitionSpec()
    table: dict[str, tuple[str, ...]] = {}
    for logical, mesh in rules:
        if logical in table:
            continue
        if mesh is None:
            table[logical] = ()
        elif isinstance(mesh, str):
            table[logical] = (mesh,)
        else:
            table[logical] = tuple(mesh)
    used: set[str] = set()
    out: list[Any] = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        axes = tuple(a for a in table.get(name, ()) if a not in used
                     and (mesh_axes is None or a in mesh_axes))
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


# --- activations ---------------------------------------------------------------------------

_CTX = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: Mesh | None, rules: Rules) -> Iterator[None]:
    """Within this context :func:`constrain` pins activations onto ``mesh`` by ``rules``."""
    prev = getattr(_CTX, "value", None)
    _CTX.value = (mesh, tuple(rules)) if mesh is not None else None
    try:
        yield
    finally:
        _CTX.value = prev


def current_rules() -> tuple[Mesh, tuple] | None:
    """``(mesh, rules)`` of the enclosing :func:`activation_rules`, or None outside one."""
    return getattr(_CTX, "value", None)


def target_platform() -> str:
    """The platform the program is being built for: the mesh's devices under
    :func:`activation_rules` (an ahead-of-time TPU topology on a CPU host too), else the default
    backend."""
    ctx = current_rules()
    if ctx is not None:
        return ctx[0].devices.flat[0].platform
    return jax.default_backend()


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`activation_rules`."""
    ctx = getattr(_CTX, "value", None)
    if ctx is None:
        return x
    mesh, rules = ctx
    if len(names) != x.ndim:
        raise ValueError(f"logical names {names} do not match activation of shape {x.shape}")
    spec = logical_to_mesh_spec(names, rules, mesh.axis_names)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
