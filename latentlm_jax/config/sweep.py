"""The schema of a sweep file (``configs/sweeps/<name>.py``) and its device-free checks.

A sweep is a base config plus points, each a set of overrides of it (docs/sweeps.md)::

    from latentlm_jax.config.sweep import sweep_config

    def get_config():
        s = sweep_config()
        s.base = "configs/lm_tiny.py"                      # or "configs/latentlm.py" + size_arg
        s.sizes = {"xs": {"model": {"num_layers": 1, "emb_dim": 32}},
                   "s": {"model": {"num_layers": 2, "emb_dim": 64}}}
        s.axes = {"train": {"learning_rate": (1e-3, 3e-3)}}   # product with the sizes
        s.overrides = {"train": {"log_every": 10}}             # every point
        return s

``sizes``, ``axes`` and ``overrides`` are nested like the config they change (ConfigDict keys
cannot hold dots); :func:`flatten` turns them into ``{"train.learning_rate": ...}``. A point's
overrides reach the base config as ``--config.a.b=text`` strings (:func:`format_value`), so a point
run by the sweep and its printed ``latentlm train`` command are the same run.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import ml_collections as mlc

from latentlm_jax.config.loading import ConfigError

FRONTIERS = ("auto", "final", "curves")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_SIZE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def sweep_config() -> mlc.ConfigDict:
    """Every field of a sweep file, with its default."""
    s = mlc.ConfigDict()
    s.name = "sweep"
    # The config of every point: "configs/X.py" or "configs/X.py:arg" (relative to the directory
    # `latentlm sweep` runs in, like --config).
    s.base = ""
    # Model sizes, name → overrides nested like the config ({} = the base config's own model).
    # With size_arg=True a size's name is passed as the base config's argument instead
    # (configs/latentlm.py:<name>), and its overrides come on top. No sizes = one size, the base.
    s.sizes = mlc.ConfigDict()
    s.size_arg = False
    # Axes, nested like the config; every leaf is a tuple of values. Points are the product of
    # the sizes and every axis, in the order written.
    s.axes = mlc.ConfigDict()
    # Overrides every point shares, nested like the config.
    s.overrides = mlc.ConfigDict()
    # > 0: the compute-optimal rule. Each point trains on tokens_per_param × its parameter count
    # (all parameters, embeddings and heads included): train.num_steps is derived, rounded up to a
    # whole step, so train.num_steps may not be set anywhere else. 0 = off.
    s.tokens_per_param = 0.0
    f = s.fit = mlc.ConfigDict()
    # Which (compute, loss) pairs the fit of L(C) = a·C^(−b) + c runs on: "final" the points'
    # final losses, "curves" every logged loss of every point, both reduced to the compute
    # frontier (the lowest loss at each compute); "auto" = final when at least 4 finished points
    # lie on the frontier, else curves.
    f.frontier = "auto"
    # curves: each point's rows before this fraction of its steps are left out (the warm-up).
    f.skip_fraction = 0.2
    # Bootstrap resamples (over the frontier points) for the fit's uncertainty; 0 = the
    # Jacobian's standard errors only.
    f.bootstrap = 200
    return s


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"num_steps": 5}}`` → ``{"train.num_steps": 5}`` (leaves: non-dict values)."""
    if not isinstance(node, mlc.ConfigDict | dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def format_value(value: Any) -> str:
    """The ``--config.a.b=<text>`` text that :func:`~latentlm_jax.config.loading.parse_value`
    reads back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return repr(tuple(value))
    if value is None:
        return "None"
    return str(value)


def name_part(value: Any) -> str:
    """A filesystem-safe rendering of one override value for a point's name."""
    text = repr(value) if isinstance(value, float) else format_value(value)
    return _SAFE.sub("_", text.replace(" ", "")).strip("_") or "_"


def short_keys(fields: list[str]) -> dict[str, str]:
    """The last component of each dotted field, or the whole field where two would collide."""
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last, strict=True)}


def check_sweep(s: mlc.ConfigDict) -> None:
    """Schema and values of a sweep (device-free; the points' configs are checked when they are
    built). Raises :class:`ConfigError` with one line."""
    known = set(sweep_config().keys())
    extra = sorted(set(s.keys()) - known)
    if extra:
        raise ConfigError(extra[0], f"unknown sweep field (known: {', '.join(sorted(known))})")
    unknown_fit = sorted(set(s.fit.keys()) - set(sweep_config().fit.keys()))
    if unknown_fit:
        raise ConfigError(f"fit.{unknown_fit[0]}", "unknown sweep field")
    if not s.base:
        raise ConfigError("base", "a sweep needs a base config: s.base = 'configs/X.py[:arg]'")
    for name, sub in s.sizes.items():
        if not _SIZE_NAME.match(str(name)):
            raise ConfigError(f"sizes.{name}", "a size name is letters, digits and . _ + - "
                                               "(it names the point's workdir)")
        if not isinstance(sub, mlc.ConfigDict | dict):
            raise ConfigError(f"sizes.{name}", "must be a dict of overrides nested like the "
                                               f"config (got {type(sub).__name__})")
    if s.size_arg and not s.sizes:
        raise ConfigError("size_arg", "True needs sizes: their names are the base config's "
                                      "arguments")
    if s.size_arg and ":" in s.base:
        raise ConfigError("base", "with size_arg=True the base takes no ':arg' (each size's "
                                  "name is its argument)")
    axes = flatten(s.axes)
    for field, values in axes.items():
        if not isinstance(values, tuple | list) or not values:
            raise ConfigError(f"axes.{field}", "must be a non-empty tuple of values")
        if len({format_value(v) for v in values}) != len(values):
            raise ConfigError(f"axes.{field}", f"repeats a value: {tuple(values)}")
    places = {"overrides": set(flatten(s.overrides)), "axes": set(axes)}
    for name, sub in s.sizes.items():
        places[f"sizes.{name}"] = set(flatten(sub))
    sized = set().union(*(v for k, v in places.items() if k.startswith("sizes.")))
    for a, b in itertools.combinations(("overrides", "axes", "sizes"), 2):
        fa = sized if a == "sizes" else places[a]
        fb = sized if b == "sizes" else places[b]
        both = sorted(fa & fb)
        if both:
            raise ConfigError(f"{b}.{both[0]}", f"is set in both {a} and {b}; set it in one")
    if s.tokens_per_param < 0:
        raise ConfigError("tokens_per_param", f"must be ≥ 0; got {s.tokens_per_param}")
    if s.tokens_per_param > 0:
        where = [k for k, v in places.items() if "train.num_steps" in v]
        if where:
            raise ConfigError("tokens_per_param", f"derives train.num_steps, which {where[0]} "
                                                  "also sets; remove one")
    if s.fit.frontier not in FRONTIERS:
        raise ConfigError("fit.frontier", f"must be one of {', '.join(FRONTIERS)}; "
                                          f"got {s.fit.frontier!r}")
    if not 0 <= s.fit.skip_fraction < 1:
        raise ConfigError("fit.skip_fraction", f"must be in [0, 1); got {s.fit.skip_fraction}")
    if s.fit.bootstrap < 0:
        raise ConfigError("fit.bootstrap", f"must be ≥ 0; got {s.fit.bootstrap}")
