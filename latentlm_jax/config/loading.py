"""Loading ``get_config()`` files and applying ``--config.a.b=value`` overrides (big_vision style).

Overrides are parsed by the type of the field they replace, so
``--config.train.num_steps=abc`` fails with a message naming the field instead of a traceback.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any

import ml_collections as mlc


class ConfigError(ValueError):
    """A config problem, reported to the user as one line: ``config.<field>: <problem>``."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"config.{field}: {problem}" if field else problem)


def load_config_file(spec: str) -> mlc.ConfigDict:
    """Loads ``path/to/config.py`` or ``path/to/config.py:arg`` (passed to ``get_config(arg)``)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError("", f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_latentlm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report, don't crash with a traceback
        raise ConfigError("", f"cannot load config file {path}: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError("", f"config file {path} defines no get_config()")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        # ConfigDict is type-safe: a wrong-typed assignment in the file fails here.
        raise ConfigError("", f"{path}: get_config() failed: {e}") from e
    if not isinstance(config, mlc.ConfigDict):
        raise ConfigError("", f"get_config() in {path} must return an ml_collections.ConfigDict")
    return config


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(field: str, text: str, current: Any) -> Any:
    """Parses ``text`` as the type of ``current`` (the value it replaces)."""
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                return text[1:-1]
            return text
        if isinstance(current, tuple | list):
            value = ast.literal_eval(text) if text.strip() else ()
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, tuple | list):
                raise ValueError
            return tuple(value)
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
    except (ValueError, SyntaxError):
        pass
    kind = type(current).__name__
    raise ConfigError(field, f"expected {kind}, got {text!r}")


def apply_overrides(config: mlc.ConfigDict, overrides: list[str]) -> mlc.ConfigDict:
    """Applies ``a.b=value`` strings (the part after ``--config.``) to ``config`` in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override needs a value: --config.a.b=value")
        dotted, text = item.split("=", 1)
        keys = dotted.split(".")
        node = config
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, mlc.ConfigDict) or key not in node:
                raise ConfigError(".".join(keys[: depth + 1]), "unknown key")
            node = node[key]
        last = keys[-1]
        if not isinstance(node, mlc.ConfigDict) or last not in node:
            raise ConfigError(dotted, "unknown key")
        current = node[last]
        if isinstance(current, mlc.ConfigDict):
            raise ConfigError(dotted, "is a group; override one of its fields instead")
        value = parse_value(dotted, text, current)
        with node.unlocked():
            node[last] = value
    return config


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=value`` (and ``--config.a.b value``) from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ConfigError(body, "override needs a value: --config.a.b=value")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides
