"""``latentlm``: the command-line entry point. Subcommands live in their own modules."""

from __future__ import annotations

import argparse
import sys

from latentlm_jax.config.loading import ConfigError

COMMANDS = {
    "train": ("latentlm_jax.cli.train", "train a model from a config file into --workdir"),
    "generate": ("latentlm_jax.cli.generate", "generate images, audio or captions with a LatentLM"),
    "eval": ("latentlm_jax.cli.eval", "reconstruction quality and latent diagnostics of σ-VAEs"),
    "encode": ("latentlm_jax.cli.encode", "encode a dataset into latents with a trained σ-VAE"),
    "tokenizer": ("latentlm_jax.cli.tokenizer", "train a SentencePiece tokenizer on text files"),
    "bench": ("latentlm_jax.cli.bench", "benchmarks that print figures"),
    "demo": ("latentlm_jax.cli.demo", "train, generate and score a multimodal LatentLM on the built-in data"),  # noqa: E501
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentlm",
        description="Multimodal latent language models (next-token diffusion) in JAX.",
        epilog="Config fields are overridden with --config.a.b=value after the config file.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from latentlm_jax.config.loading import split_config_args

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = split_config_args(argv)
    except ConfigError as e:
        print(f"latentlm: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(rest)
    args.config_overrides = overrides
    import importlib

    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except ConfigError as e:
        print(f"latentlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
