"""``latentlm``: the command-line entry point. Subcommands live in their own modules.

A user's mistake — a bad config, a bad example under ``data.bad_input=error``, a missing file or
an unusable workdir — is one line on stderr and exit status 2; a traceback means a bug (or
``--debug``, which re-raises every error with its traceback).
"""

from __future__ import annotations

import argparse
import sys

from latentlm_jax.config.loading import ConfigError

COMMANDS = {
    "train": ("latentlm_jax.cli.train", "train a model from a config file into --workdir"),
    "generate": ("latentlm_jax.cli.generate", "generate images, audio or captions with a LatentLM"),
    "eval": ("latentlm_jax.cli.eval", "reconstruction quality and latent diagnostics of σ-VAEs"),
    "eval-images": ("latentlm_jax.cli.eval_images", "FID and Inception Score of generated images against a reference set"),  # noqa: E501
    "reconstruct": ("latentlm_jax.cli.reconstruct", "write a σ-VAE's reconstructions of a dataset as PNG / WAV files"),  # noqa: E501
    "encode": ("latentlm_jax.cli.encode", "encode a dataset into latents with a trained σ-VAE"),
    "export": ("latentlm_jax.cli.export", "export a trained run's weights, config and tokenizer for inference"),  # noqa: E501
    "tokenizer": ("latentlm_jax.cli.tokenizer", "train a SentencePiece tokenizer on text files"),
    "bench": ("latentlm_jax.cli.bench", "benchmarks that print figures"),
    "profile": ("latentlm_jax.cli.profile", "where a traced run's train steps spent their time, per op and matmul shape"),  # noqa: E501
    "describe": ("latentlm_jax.cli.describe", "a config's parameters and training FLOPs per token (no compile)"),  # noqa: E501
    "demo": ("latentlm_jax.cli.demo", "train, generate and score a multimodal LatentLM on the built-in data"),  # noqa: E501
    "sweep": ("latentlm_jax.cli.sweep", "train a sweep file's points, tabulate, fit scaling laws, plot"),  # noqa: E501
}

_DEBUG_HELP = "show the full traceback of any error (for bug reports)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentlm",
        description="Multimodal latent language models (next-token diffusion) in JAX.",
        epilog="Config fields are overridden with --config.a.b=value after the config file.")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also accepted after the command; SUPPRESS keeps a flag given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=_DEBUG_HELP)
        importlib.import_module(module).add_arguments(p)
    return parser


def user_error(exc: BaseException) -> str | None:
    """The one line to show for a known user error, or None for a bug."""
    from latentlm_jax.data.bad_input import BadInput, DataError, format_bad_input
    from latentlm_jax.train.workdir_check import CheckpointWriteError

    if isinstance(exc, ConfigError | DataError | CheckpointWriteError):
        return " ".join(str(exc).split())
    if isinstance(exc, BadInput):  # raised outside any policy: report it like the policy does
        return format_bad_input(exc)
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError |
                  PermissionError | FileExistsError):
        if exc.filename is not None and exc.strerror:  # raised by the OS
            return f"{exc.strerror}: {exc.filename}"
        return " ".join(str(exc).split())
    return None


def main(argv: list[str] | None = None) -> int:
    from latentlm_jax.cli.platforms import default_to_cpu_without_accelerator
    from latentlm_jax.config.loading import split_config_args
    from latentlm_jax.host_malloc import reexec_with_host_malloc, retain_freed_memory

    default_to_cpu_without_accelerator()  # before JAX starts: libtpu stays quiet on a CPU host
    try:
        if argv is None:  # the `latentlm` command itself: jemalloc, or huge pages (host_malloc)
            reexec_with_host_malloc()
        # before JAX starts its CPU threads: their temporaries reuse freed memory, no page faults
        retain_freed_memory()
    except ValueError as e:
        print(f"latentlm: error: {e}", file=sys.stderr)
        return 2
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

    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("latentlm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error(e)
        if message is None or args.debug:
            raise
        print(f"latentlm: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
