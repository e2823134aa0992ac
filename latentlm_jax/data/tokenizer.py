"""Tokenizers: bytes (the default, no model file) and SentencePiece, with the same special tokens.

Both put the eight special tokens at ids 0..7, in this order::

    <pad>=0 <bos>=1 <eos>=2 <boi>=3 <eoi>=4 <boa>=5 <eoa>=6 <latent>=7

so packed rows pad with 0 and a checkpoint's special ids do not depend on the tokenizer. Special
tokens are never produced by ``encode`` from text: a literal ``"<eos>"`` in a document is encoded as
ordinary text (bytes / pieces), so user text cannot end a document or open an image span. They are
inserted by id (``tok.bos_id``, …) by the sequence builders, and ``decode`` drops them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from latentlm_jax import paths
from latentlm_jax.modality import SPECIAL_TOKENS

NUM_SPECIAL = len(SPECIAL_TOKENS)


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipeline and the samplers need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    boi_id: int
    eoi_id: int
    boa_id: int
    eoa_id: int
    latent_id: int

    def encode(self, text: str | bytes) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class _SpecialIds:
    """The fixed special ids 0..7 as attributes."""

    pad_id = 0
    bos_id = 1
    eos_id = 2
    boi_id = 3
    eoi_id = 4
    boa_id = 5
    eoa_id = 6
    latent_id = 7


def _as_text(text: str | bytes) -> str:
    """``text`` as a ``str`` that encodes to UTF-8; ValueError (naming the position) otherwise."""
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"invalid UTF-8 input at byte {exc.start}: {exc.reason}") from exc
    if not isinstance(text, str):
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    return text


def _utf8(text: str | bytes) -> bytes:
    if isinstance(text, bytes | bytearray | memoryview):
        _as_text(text)  # validates
        return bytes(text)
    try:
        return _as_text(text).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. "\udc80"
        raise ValueError(f"text is not valid Unicode at character {exc.start}: "
                         f"{exc.reason}") from exc


class ByteTokenizer(_SpecialIds):
    """UTF-8 bytes: byte ``b`` is id ``b + 8``; vocabulary 264."""

    vocab_size = NUM_SPECIAL + 256

    def encode(self, text: str | bytes) -> list[int]:
        return [b + NUM_SPECIAL for b in _utf8(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Special ids are dropped; byte sequences that are not UTF-8 become U+FFFD."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside the byte vocabulary [0, {self.vocab_size})")
            if i >= NUM_SPECIAL:
                out.append(i - NUM_SPECIAL)
        return out.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class SentencePieceTokenizer(_SpecialIds):
    """A SentencePiece model trained by :func:`train_sentencepiece` (specials at ids 0..7)."""

    def __init__(self, model_path: str):
        import sentencepiece as spm

        self.model_path = paths.as_str(model_path)
        if not paths.is_file(self.model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_path}")
        # from bytes, so a model in a bucket loads like a local one
        self._sp = spm.SentencePieceProcessor(model_proto=paths.read_bytes(self.model_path))
        self.vocab_size = int(self._sp.get_piece_size())
        found = tuple(self._sp.id_to_piece(i) for i in range(min(NUM_SPECIAL, self.vocab_size)))
        if found != SPECIAL_TOKENS or not all(self._sp.is_control(i) for i in range(NUM_SPECIAL)):
            raise ValueError(
                f"{self.model_path}: ids 0..7 must be the control symbols {SPECIAL_TOKENS}, got "
                f"{found}; train the model with latentlm_jax.data.tokenizer.train_sentencepiece")

    def encode(self, text: str | bytes) -> list[int]:
        return list(self._sp.encode(_utf8(text).decode("utf-8")))

    def decode(self, ids: Iterable[int]) -> str:
        """Control ids (the specials) decode to nothing; stray byte pieces to U+FFFD."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
        return self._sp.decode(ids)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def train_sentencepiece(
    text_files: str | Sequence[str],
    model_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    num_threads: int = 1,
) -> str:
    """Trains a SentencePiece model offline on UTF-8 text files (one sentence per line); returns
    the ``.model`` path.

    The model is lossless (``decode(encode(s)) == s`` for every string): no normalisation, no
    whitespace folding, no dummy prefix, and byte fallback for characters outside the training
    text. ``vocab_size`` is an upper bound (a tiny corpus may yield fewer pieces); it must leave
    room for the 8 specials, ``<unk>`` and the 256 byte pieces.
    """
    import sentencepiece as spm

    files = [text_files] if isinstance(text_files, str) else list(text_files)
    if not files:
        raise ValueError("train_sentencepiece needs at least one text file")
    for path in files:
        if not paths.is_file(path):
            raise FileNotFoundError(f"training text not found: {path}")
    minimum = NUM_SPECIAL + 1 + 256
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size must exceed {minimum} (specials, <unk>, 256 byte pieces), "
                         f"got {vocab_size}")
    # SentencePiece reads and writes local files only: text in a bucket is streamed to it line
    # by line, and a model for a bucket is trained into a temporary folder, then copied there.
    remote_in = any(paths.is_url(p) for p in files)
    source = ({"sentence_iterator": _lines(files)} if remote_in
              else {"input": ",".join(files)})
    with tempfile.TemporaryDirectory() as tmp:
        prefix = (os.path.join(tmp, "model") if paths.is_url(model_prefix)
                  else paths.as_str(model_prefix))
        paths.makedirs(os.path.dirname(prefix))
        _train(spm, source, prefix, vocab_size, model_type, num_threads)
        if prefix != paths.as_str(model_prefix):
            for ext in (".model", ".vocab"):
                paths.copy_file(prefix + ext, model_prefix + ext)
    return model_prefix + ".model"


def _lines(files: Sequence[str]) -> Iterator[str]:
    for path in files:
        with paths.open_file(path) as f:
            for line in f:
                yield line.rstrip("\n")


def _train(spm, source: dict, model_prefix: str, vocab_size: int, model_type: str,
           num_threads: int) -> None:
    spm.SentencePieceTrainer.train(
        **source,
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0, pad_piece="<pad>",
        bos_id=1, bos_piece="<bos>",
        eos_id=2, eos_piece="<eos>",
        unk_id=NUM_SPECIAL, unk_piece="<unk>",
        control_symbols=list(SPECIAL_TOKENS[3:]),  # ids 3..7, in order
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        num_threads=num_threads,
        minloglevel=2,
    )


def make_tokenizer(data_config) -> Tokenizer:
    """The tokenizer ``config.data`` names (``tokenizer``: byte | sentencepiece)."""
    kind = data_config.tokenizer
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        if not data_config.tokenizer_model:
            raise ValueError("data.tokenizer_model must name a .model file for sentencepiece")
        return SentencePieceTokenizer(data_config.tokenizer_model)
    raise ValueError(f"data.tokenizer must be 'byte' or 'sentencepiece', got {kind!r}")
