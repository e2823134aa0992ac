"""Tokenizers: byte and SentencePiece round trips, special tokens, invalid input."""

from __future__ import annotations

import pickle

import ml_collections as mlc
import pytest

from latentlm_jax.data.tokenizer import (
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    make_tokenizer,
    train_sentencepiece,
)
from latentlm_jax.modality import SPECIAL_TOKENS

SAMPLES = [
    "a large red circle in the top left",
    "notes C4 E4 G4",
    "héllo wörld — ünïcode 日本語 🙂",
    "  leading, double  spaces,\ttabs and\nnew lines  ",
    "",
    "\x00 control \x7f bytes",
]
SPECIAL_NAMES = ("pad", "bos", "eos", "boi", "eoi", "boa", "eoa", "latent")


def _special_ids(tok) -> list[int]:
    return [getattr(tok, f"{name}_id") for name in SPECIAL_NAMES]


# ---------------------------------------------------------------------------- bytes
def test_byte_layout():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 264
    assert _special_ids(tok) == list(range(8))
    assert tok.pad_id == 0


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == [b + 8 for b in text.encode("utf-8")]
    assert all(8 <= i < 264 for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode(text.encode("utf-8")) == ids  # bytes input


def test_byte_decode_drops_specials_and_literal_specials_are_text():
    tok = ByteTokenizer()
    text = "a <boi> b <eos> c"
    ids = tok.encode(text)
    assert not set(ids) & set(range(8))  # literal "<eos>" is plain bytes
    framed = [tok.bos_id, *ids[:3], tok.latent_id, tok.boi_id, *ids[3:], tok.eos_id, tok.pad_id]
    assert tok.decode(framed) == text


def test_byte_decode_replaces_invalid_utf8():
    tok = ByteTokenizer()
    e_acute = tok.encode("é")  # two bytes
    assert len(e_acute) == 2
    assert tok.decode(e_acute[:1]) == "\ufffd"
    assert tok.decode([0xFF + 8, *tok.encode("ok")]) == "\ufffdok"


def test_byte_invalid_input_raises():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode(b"ok \xff\xfe")
    with pytest.raises(ValueError, match="Unicode"):
        tok.encode("lone \udc80 surrogate")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([264])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])


# ---------------------------------------------------------------------------- SentencePiece
@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    corpus = root / "corpus.txt"
    lines = []
    for i in range(300):
        lines += [f"a large red circle in the top left {i}", "notes C4 E4 G4",
                  "the quick brown fox jumps over the lazy dog", "héllo wörld"]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train_sentencepiece([str(corpus)], str(root / "tok"), vocab_size=400)


def test_sentencepiece_specials(spm_model):
    tok = SentencePieceTokenizer(spm_model)
    assert isinstance(tok, Tokenizer)
    assert _special_ids(tok) == list(range(8))
    assert 8 + 1 + 256 < tok.vocab_size <= 400
    assert [tok._sp.id_to_piece(i) for i in range(8)] == list(SPECIAL_TOKENS)


@pytest.mark.parametrize("text", SAMPLES + ["unseen ÆØÅ ✓ ∑ text 12345", "<boi><latent><eos>"])
def test_sentencepiece_round_trip(spm_model, text):
    tok = SentencePieceTokenizer(spm_model)
    ids = tok.encode(text)
    assert all(8 <= i < tok.vocab_size for i in ids)  # specials never come from text
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text
    assert tok.encode(text.encode("utf-8")) == ids


def test_sentencepiece_compresses_training_text(spm_model):
    tok = SentencePieceTokenizer(spm_model)
    text = "the quick brown fox jumps over the lazy dog"
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2


def test_sentencepiece_invalid_input_and_pickle(spm_model):
    tok = SentencePieceTokenizer(spm_model)
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode(b"\xc3(")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    clone = pickle.loads(pickle.dumps(tok))  # Grain workers receive pickled tokenizers
    assert clone.encode(SAMPLES[2]) == tok.encode(SAMPLES[2])


def test_sentencepiece_rejects_foreign_models(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["some text here", "more text there"] * 50), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=40, minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(ValueError, match="control symbols"):
        SentencePieceTokenizer(str(tmp_path / "plain.model"))
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="vocab_size"):
        train_sentencepiece([str(corpus)], str(tmp_path / "small"), vocab_size=200)


def test_make_tokenizer(spm_model):
    d = mlc.ConfigDict({"tokenizer": "byte", "tokenizer_model": ""})
    assert isinstance(make_tokenizer(d), ByteTokenizer)
    d.tokenizer = "sentencepiece"
    with pytest.raises(ValueError, match="tokenizer_model"):
        make_tokenizer(d)
    d.tokenizer_model = spm_model
    assert make_tokenizer(d).encode("notes") == SentencePieceTokenizer(spm_model).encode("notes")
    d.tokenizer = "words"
    with pytest.raises(ValueError, match="byte"):
        make_tokenizer(d)
