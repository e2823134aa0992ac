"""``latentlm train --config configs/X.py --workdir DIR [--config.a.b=value ...]``"""

from __future__ import annotations

import argparse
import os

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--workdir", required=True,
                        help="output directory: checkpoints/, metrics.jsonl, tensorboard/, "
                             "samples/; re-running with the same workdir resumes")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    quiet_logs()
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    from latentlm_jax.train.trainer import train

    train(config, args.workdir)
    return 0
