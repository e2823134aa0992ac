"""Helpers shared by subcommands: config loading with overrides and validation."""

from __future__ import annotations

import argparse
import logging
import os

import ml_collections as mlc

from latentlm_jax.config.loading import apply_overrides, load_config_file
from latentlm_jax.config.validate import validate


def add_config_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required,
                        help="config file (configs/X.py, optionally configs/X.py:arg); override "
                             "fields with --config.a.b=value")


def load_config(args: argparse.Namespace) -> mlc.ConfigDict:
    """Config file + overrides, validated (everything except the device-dependent mesh checks)."""
    config = load_config_file(args.config)
    apply_overrides(config, getattr(args, "config_overrides", []))
    validate(config)
    return config


def quiet_logs() -> None:
    """Keeps the console to our own progress lines."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)
    for name in ("orbax", "jax._src", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # tensorboardX warns once per non-finite scalar it is given: the non-finite guard
    # (docs/reliability.md) already says which step and which terms, in one line.
    logging.getLogger("tensorboardX").setLevel(logging.ERROR)


def check_out_dir(out: str, flag: str = "--out") -> None:
    """An output directory may be new or a directory, never a file: checked before any model is
    loaded, so the mistake costs no time."""
    from latentlm_jax import paths
    from latentlm_jax.config.loading import ConfigError

    if out and paths.exists(out) and not paths.is_dir(out):
        raise ConfigError("", f"{flag} {out} is a file, not a directory")
