"""``latentlm tokenizer --text-files A [B ...] --vocab-size N --out PREFIX``: trains a SentencePiece
model with the framework's special tokens; use it with ``--config.data.tokenizer=sentencepiece
--config.data.tokenizer_model=PREFIX.model`` (and a ``model.vocab_size`` at least N)."""

from __future__ import annotations

import argparse

from latentlm_jax.config.loading import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-files", nargs="+", required=True,
                        help="UTF-8 text files (or globs), one sentence per line")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.model/.vocab")
    parser.add_argument("--model-type", default="bpe", help="bpe | unigram")


def run(args: argparse.Namespace) -> int:
    from latentlm_jax.data.sources import expand_paths
    from latentlm_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

    try:
        files = expand_paths(args.text_files)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("", str(e)) from e
    if not files:
        raise ConfigError("", f"no text file matches {args.text_files}")
    try:
        path = train_sentencepiece(files, args.out, args.vocab_size, model_type=args.model_type)
    except (ValueError, RuntimeError, OSError) as e:
        raise ConfigError("", f"SentencePiece training failed: {e}") from e
    tok = SentencePieceTokenizer(path)
    print(f"wrote {path}: {tok.vocab_size} ids (trained on {len(files)} file(s))")
    return 0
