"""``latentlm train --config configs/X.py --workdir DIR [--config.a.b=value ...]``"""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--workdir", required=True,
                        help="output directory: checkpoints/, metrics.jsonl, tensorboard/, "
                             "samples/; re-running with the same workdir resumes")


def check_input_files(config) -> None:
    """Pre-encoded latents must exist before a workdir is made or anything compiles."""
    from latentlm_jax.config.loading import ConfigError

    if config.task == "lm" and config.data.source == "latents":
        from latentlm_jax.data.array_record_source import expand_paths

        try:
            expand_paths(tuple(config.data.latent_files))
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError("data.latent_files", f"{e} (make them with `latentlm encode`, or "
                                                   f"`make demo` for runs/demo/latents)") from e


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    quiet_logs()
    check_input_files(config)
    from latentlm_jax.train.checkpoint_io import save_run_config
    from latentlm_jax.train.trainer import train

    save_run_config(config, args.workdir)

    train(config, args.workdir)
    return 0
