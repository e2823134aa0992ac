"""``latentlm train --config configs/X.py --workdir DIR [--config.a.b=value ...]``"""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--workdir", required=True,
                        help="output directory: checkpoints/, metrics.jsonl, tensorboard/, "
                             "samples/; re-running with the same workdir resumes")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    quiet_logs()
    from latentlm_jax.train.checkpoint_io import save_run_config
    from latentlm_jax.train.trainer import train

    save_run_config(config, args.workdir)

    train(config, args.workdir)
    return 0
