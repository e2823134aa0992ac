"""What ``latentlm eval`` and ``latentlm reconstruct`` share: a trained σ-VAE run, and the data to
run it on.

The data is the ``data`` section of ``--config C`` (with the ``--config.a.b=v`` overrides), or,
without ``--config``, of the run's own config (overrides apply to it): the built-in data's test
split, a manifest, or a TFDS split. Examples without the σ-VAE's modality, and unusable ones, go
to ``data.bad_input`` (skipped and counted, or a one-line error).
"""

from __future__ import annotations

import argparse
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError, apply_overrides
from latentlm_jax.config.validate import check_data_source, check_vae_data
from latentlm_jax.data.bad_input import BadInputPolicy, DataError, skip_summary
from latentlm_jax.modality import VAE_TASKS


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="config whose data section names the data (data.source "
                             "shapes_tones | manifest | tfds, with data.manifest / "
                             "data.tfds_split ...); default: the run's own data (the built-in "
                             "test split for runs on the built-in data)")


def load_vae_run_config(workdir: str) -> mlc.ConfigDict:
    """The config of the σ-VAE run in ``workdir`` (a one-line error if it is not one)."""
    from latentlm_jax.train.checkpoint_io import load_run_config

    if not paths.is_dir(workdir):
        raise ConfigError("", f"--workdir {workdir} does not exist")
    config = load_run_config(workdir)
    if config.task not in VAE_TASKS.values():
        raise ConfigError("task", f"{workdir} is a {config.task!r} run, not a σ-VAE run "
                                  f"({', '.join(VAE_TASKS.values())})")
    return config


def data_config(args: argparse.Namespace, run_config: mlc.ConfigDict) -> mlc.ConfigDict:
    """The config whose ``data`` section names the data, checked against the σ-VAE."""
    overrides = getattr(args, "config_overrides", [])
    if args.config:
        from latentlm_jax.cli.common import load_config

        config = load_config(args)
    else:
        config = apply_overrides(mlc.ConfigDict(run_config.to_dict()), overrides)
        check_data_source(config.data)
    check_vae_data(run_config.task, config.data, run_config.vae)
    return config


def load_examples(run_config: mlc.ConfigDict, config: mlc.ConfigDict, n: int,
                  policy: BadInputPolicy) -> tuple[list[tuple[int, dict[str, Any]]], bool, str]:
    """The first ``n`` usable ``(index, example)`` pairs, whether they are built-in, and a short
    name of the data; a :class:`DataError` when none is usable."""
    from latentlm_jax.vae.sources import describe_data, first_usable, is_builtin, open_examples
    from latentlm_jax.vae.task import load_test_examples

    task = run_config.task
    name = describe_data(config.data, "test")
    if is_builtin(config.data):
        return list(enumerate(load_test_examples(config, n))), True, name
    source = open_examples(task, config, run_config.vae, "test")
    examples = first_usable(source, n, policy)
    if not examples:
        skipped = skip_summary(policy.counts()) or "it is empty"
        raise DataError(f"no usable example for a {task} run in {name} ({skipped})")
    return examples, False, name
