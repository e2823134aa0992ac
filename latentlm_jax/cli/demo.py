"""``latentlm demo [--workdir runs/demo] [--fast] [--config FILE] [--config.a.b=value ...]``

Trains the σ-VAEs and a multimodal LatentLM on the built-in data, generates for test-split
prompts, scores every sample and writes a report; re-running resumes (latentlm_jax/demo).
"""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError, apply_overrides, load_config_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo",
                        help="where every stage writes (default runs/demo); re-running with the "
                             "same workdir reuses finished stages and resumes unfinished ones")
    parser.add_argument("--fast", action="store_true",
                        help="tiny settings (configs/demo_fast.py): the same stages in about two "
                             "minutes, with low scores")
    parser.add_argument("--config", default=None,
                        help="demo settings file with a get_config() (default: configs/demo.py); "
                             "override fields with --config.a.b=value, e.g. "
                             "--config.lm.train.num_steps=300")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    if args.fast and args.config:
        raise ConfigError("", "--fast and --config are exclusive (--fast is --config "
                              "configs/demo_fast.py; the default is configs/demo.py)")
    from latentlm_jax.demo.pipeline import configs_dir, run_demo

    config = load_config_file(args.config or
                              str(configs_dir() / ("demo_fast.py" if args.fast else "demo.py")))
    apply_overrides(config, getattr(args, "config_overrides", []))
    run_demo(config, args.workdir)
    return 0
