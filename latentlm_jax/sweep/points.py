"""A sweep file → its points: each a base config spec plus overrides, with a stable name.

A point's name is its size and the values of every axis (and the derived ``num_steps`` under the
compute-optimal rule), e.g. ``s__learning_rate-0.003``: filesystem-safe, the same on every run of
the same sweep file, so a re-run finds its earlier workdirs under ``W/points/<name>/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shlex
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError, apply_overrides, load_config_file
from latentlm_jax.config.sweep import (
    check_sweep,
    flatten,
    format_value,
    name_part,
    short_keys,
)
from latentlm_jax.config.validate import validate


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    size: str  # the size's name; "" when the sweep has no sizes
    config_spec: str  # "configs/X.py" or "configs/X.py:arg"
    overrides: dict[str, Any]  # dotted field → value, in the order applied
    varied: dict[str, Any]  # the axis values (and the rule's num_steps) that name the point

    def override_texts(self) -> list[str]:
        """``a.b=text`` strings, as ``--config.`` takes them."""
        return [f"{k}={format_value(v)}" for k, v in self.overrides.items()]

    def config(self) -> mlc.ConfigDict:
        """The point's config, exactly as ``latentlm train`` builds it from :meth:`command`."""
        try:
            config = load_config_file(self.config_spec)
            apply_overrides(config, self.override_texts())
            validate(config)
        except ConfigError as e:
            raise ConfigError(e.field, f"{e.problem} (sweep point {self.name})") from e
        return config

    def command(self, workdir: str, program: tuple[str, ...] = ("latentlm",)) -> list[str]:
        """The ``latentlm train`` command line that trains this point into ``workdir``."""
        return [*program, "train", "--config", self.config_spec,
                "--workdir", workdir, *(f"--config.{t}" for t in self.override_texts())]


def load_sweep(spec: str, overrides: list[str] | None = None) -> mlc.ConfigDict:
    """A sweep file (``configs/sweeps/X.py``), ``--config.`` overrides of its fields, checked."""
    s = load_config_file(spec)
    if "base" not in s or "axes" not in s:
        raise ConfigError("", f"{spec} is not a sweep file: its get_config() must return "
                              "latentlm_jax.config.sweep.sweep_config() filled in "
                              "(docs/sweeps.md)")
    apply_overrides(s, overrides or [])
    check_sweep(s)
    base_file = s.base.partition(":")[0]
    if not paths.is_file(base_file):
        raise ConfigError("base", f"config file not found: {base_file}")
    return s


def expand_points(s: mlc.ConfigDict) -> list[Point]:
    """The product of the sizes and the axes (sizes outermost, smallest first; then the axes'
    fields by name, each's values in the order written). Under the compute-optimal rule
    (``tokens_per_param`` > 0) each point's ``train.num_steps`` is derived from its parameter
    count. Both build models abstractly (no weights)."""
    shared = flatten(s.overrides)
    sizes = _sizes_smallest_first(s, shared)
    axes = flatten(s.axes)
    fields = list(axes)
    short = short_keys(fields)
    points = []
    for (size, size_overrides), combo in itertools.product(
            sizes, itertools.product(*(axes[f] for f in fields))):
        varied = dict(zip(fields, combo, strict=True))
        overrides = {**shared, **flatten(size_overrides), **varied}
        spec = f"{s.base}:{size}" if s.size_arg else s.base
        point = Point(_name(size, varied, short), str(size), spec, overrides, varied)
        if s.tokens_per_param > 0:
            point = _with_rule_steps(point, s.tokens_per_param, short)
        else:
            point.config()  # every point's overrides checked before anything runs or prints
        points.append(point)
    names = [p.name for p in points]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError("axes", f"two points share the name {dup!r}: their values print alike; "
                                  "make them differ")
    return points


def _sizes_smallest_first(s: mlc.ConfigDict, shared: dict[str, Any]) -> list[tuple[str, Any]]:
    """The sizes by parameter count (ConfigDict sorts its keys by name, which says nothing
    about size); one unnamed size when the sweep has none."""
    if not s.sizes:
        return [("", {})]
    if len(s.sizes) == 1:
        return list(s.sizes.items())
    from latentlm_jax.sweep.measure import measure

    def params(item):
        name, overrides = item
        spec = f"{s.base}:{name}" if s.size_arg else s.base
        point = Point(str(name), str(name), spec, {**shared, **flatten(overrides)}, {})
        return measure(point.config(), resolve=False).params, str(name)

    return sorted(s.sizes.items(), key=params)


def _name(size: str, varied: dict[str, Any], short: dict[str, str]) -> str:
    parts = [size] if size else []
    parts += [f"{short.get(f, f.rsplit('.', 1)[-1])}-{name_part(v)}" for f, v in varied.items()]
    return "__".join(parts) or "base"


def _with_rule_steps(point: Point, tokens_per_param: float, short: dict[str, str]) -> Point:
    from latentlm_jax.sweep.measure import measure

    m = measure(point.config())
    steps = max(1, math.ceil(tokens_per_param * m.params / m.items_per_step))
    varied = {**point.varied, "train.num_steps": steps}
    overrides = {**point.overrides, "train.num_steps": steps}
    return dataclasses.replace(point, name=_name(point.size, varied, short), overrides=overrides,
                               varied=varied)


def point_workdir(workdir: str, point: Point) -> str:
    return paths.as_str(paths.join(workdir, "points", point.name))


def command_line(point: Point, workdir: str, program: tuple[str, ...] = ("latentlm",)) -> str:
    """One shell line (quoted) that trains ``point`` of the sweep in ``workdir``."""
    return shlex.join(point.command(point_workdir(workdir, point), program))
