"""Encoding follows ``data.bad_input``: under ``skip`` bad examples are counted by reason (and the
first of each logged with its file and line), under ``error`` the first one stops the encoding
with one line naming it; examples of another modality are neither."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from PIL import Image

from latentlm_jax.cli.encode import media_examples
from latentlm_jax.config.base import base_config
from latentlm_jax.data.array_record_source import LatentArrayRecordSource
from latentlm_jax.data.bad_input import DataError
from latentlm_jax.data.encode_latents import encode_dataset
from latentlm_jax.vae.image import ImageVAE


@pytest.fixture
def manifest(tmp_path):
    """Lines: 1–2 images, 3 text only, 4 audio only, 5 missing image, 6 image without text,
    7 corrupt image, 8 image with an empty caption, 9 a missing audio file."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    sf.write(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    lines = [{"text": "zero", "image": "0.png"}, {"text": "one", "image": "1.png"},
             {"text": "only text"}, {"text": "a tone", "audio": "a.wav"},
             {"text": "gone", "image": "gone.png"}, {"image": "2.png"},
             {"text": "broken", "image": "bad.png"}, {"text": "  ", "image": "0.png"},
             {"text": "silent", "audio": "gone.wav"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def _vae():
    v = base_config().vae
    v.image.channels, v.image.channel_mult = 8, (1, 2)
    return ImageVAE(v, rngs=nnx.Rngs(0))


def _examples(path):
    """As ``latentlm encode`` opens a manifest: images read alone, captions read alone."""
    c = base_config()
    c.data.source, c.data.manifest = "manifest", path
    return media_examples(c, "vae_image")


def test_skip_counts_by_reason_and_logs_file_and_line(tmp_path, manifest, caplog):
    caplog.set_level(logging.WARNING, logger="latentlm_jax.data.bad_input")
    out = str(tmp_path / "out")
    stats = encode_dataset(_vae(), "vae_image", _examples(manifest), out, num_examples=9,
                           batch_size=4, bad_input="skip")
    assert stats["encoded"] == 3 and stats["captioned"] == 2
    # the text-only and audio lines (the missing audio file is no concern of an image encode)
    assert stats["without_modality"] == 3
    assert stats["skipped"] == {"missing_file": 1, "corrupt_image": 1, "empty_text": 1}
    assert stats["shards"] == ["latents-image-00000-of-00001.array_record"]
    src = LatentArrayRecordSource(os.path.join(out, stats["shards"][0]))
    assert [src[i]["caption"] for i in range(len(src))] == ["zero", "one", ""]
    assert [src[i]["index"] for i in range(len(src))] == [0, 1, 5]
    with open(os.path.join(out, "stats-image.json")) as f:
        assert json.load(f)["skipped"] == stats["skipped"]
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"{manifest} line 5" in m and "gone.png" in m for m in warned), warned
    assert any(f"{manifest} line 7" in m and "bad.png" in m for m in warned), warned


def test_error_stops_at_the_first_bad_example_with_one_line(tmp_path, manifest):
    with pytest.raises(DataError) as e:
        encode_dataset(_vae(), "vae_image", _examples(manifest), str(tmp_path / "out"),
                       num_examples=9, batch_size=4, bad_input="error")
    msg = str(e.value)
    assert "\n" not in msg
    # line 3 (text only) and 4 (audio) are not bad input for an image encode; line 5 is
    assert msg.startswith(f"bad input (missing_file) at manifest {manifest} line 5")
    assert os.path.join(os.path.dirname(manifest), "gone.png") in msg
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_nothing_usable_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"text": "only text"}) + "\n")
    with pytest.raises(ValueError, match="none of the 1 examples has a usable image "
                                         r"\(1 without one"):
        encode_dataset(_vae(), "vae_image", _examples(str(path)), str(tmp_path / "out"),
                       num_examples=1)
