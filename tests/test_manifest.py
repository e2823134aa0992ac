"""JSONL manifests and the image/audio decoders behind them (latentlm_jax.data.manifest / media)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly

from latentlm_jax.data import manifest as manifest_mod
from latentlm_jax.data.bad_input import BadInput
from latentlm_jax.data.manifest import ManifestSource, index_lines
from latentlm_jax.data.media import decode_image_bytes, load_audio, load_image, resample


def _png(path, array, mode=None):
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)
    return str(path)


def _sine(freq, rate, seconds, amp=0.5):
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ------------------------------------------------------------------------------------ line index


def test_index_lines_matches_a_plain_split(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_mod, "_CHUNK", 7)  # many chunk boundaries inside lines
    content = b'{"text": "a"}\n\n  \t\r\n{"text": "bb"}\r\n   x  \n\n{"text": "last, no newline"}'
    path = tmp_path / "m.jsonl"
    path.write_bytes(content)
    starts, ends, numbers = index_lines(str(path))
    expected, pos = [], 0
    for no, line in enumerate(content.split(b"\n"), start=1):
        if line.strip():
            expected.append((pos, pos + len(line), no))
        pos += len(line) + 1
    assert list(zip(starts.tolist(), ends.tolist(), numbers.tolist(), strict=True)) == expected
    assert [content[s:e].strip() for s, e, _ in expected][-1] == b'{"text": "last, no newline"}'


def test_manifest_reads_text_image_audio_with_line_numbers(tmp_path):
    os.makedirs(tmp_path / "media")
    rng = np.random.default_rng(0)
    _png(tmp_path / "media" / "a.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    wav = tmp_path / "clip.wav"
    sf.write(wav, _sine(440, 16000, 0.5), 16000, subtype="FLOAT")
    lines = [
        json.dumps({"text": "only text", "id": 7}),
        "",
        json.dumps({"text": "a caption", "image": "media/a.png"}),
        json.dumps({"audio": str(wav), "text": None}),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = ManifestSource(str(path), image_resolution=16, sample_rate=16000, num_samples=4000)

    assert len(src) == 3
    a, b, c = src[0], src[1], src[2]
    assert a == {"text": "only text", "image": None, "audio": None, "source": f"manifest:{path}:1"}
    assert b["text"] == "a caption" and b["audio"] is None
    assert b["image"].shape == (16, 16, 3) and b["image"].dtype == np.uint8
    assert b["source"] == f"manifest:{path}:3"
    assert c["text"] is None and c["image"] is None and c["source"].endswith(":4")
    assert c["audio"].shape == (4000,) and c["audio"].dtype == np.float32
    np.testing.assert_allclose(c["audio"], _sine(440, 16000, 0.5)[:4000], atol=1e-6)
    assert src[-1]["source"] == c["source"]
    with pytest.raises(IndexError):
        src[3]


def test_manifest_accepts_bom_and_crlf(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\r\n{"text": "second"}\r\n')
    src = ManifestSource(str(path), image_resolution=8, sample_rate=16000, num_samples=0)
    assert [src[i]["text"] for i in range(len(src))] == ["first", "second"]


# ---------------------------------------------------------------------------------------- images


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    out = load_image(_png(tmp_path / "a.png", rgba), 4)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert out[0, 2].tolist() == [round(255 * (1 - 128 / 255))] * 3


def test_la_palette_transparency_and_grayscale(tmp_path):
    la = np.zeros((3, 3, 2), np.uint8)
    la[..., 0], la[..., 1] = 40, 255
    la[1, 1] = (40, 0)
    out = load_image(_png(tmp_path / "la.png", la), 3)
    assert out[1, 1].tolist() == [255] * 3 and out[0, 0].tolist() == [40] * 3

    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    pal.putpixel((2, 0), 1)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    out = load_image(str(tmp_path / "p.png"), 3)
    assert out[0, 2].tolist() == [255] * 3 and out[0, 0].tolist() == [200, 10, 10]

    gray = np.arange(9, dtype=np.uint8).reshape(3, 3) * 20
    out = load_image(_png(tmp_path / "g.png", gray), 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))

    sixteen = (np.arange(9, dtype=np.uint16).reshape(3, 3) * 8000).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    out = load_image(str(tmp_path / "g16.png"), 3)
    np.testing.assert_array_equal(out[..., 0], np.rint(sixteen / 257.0).astype(np.uint8))


def test_center_crop_at_scale_one_is_an_exact_slice(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(_png(tmp_path / "w.png", wide), 100), wide[:, 100:200])
    tall = rng.integers(0, 256, (240, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(_png(tmp_path / "t.png", tall), 80), tall[80:160])


@pytest.mark.parametrize("portrait", [False, True])
def test_resize_short_side_then_center_crop_geometry(tmp_path, portrait):
    # 400x200 (w x h) -> res 50: scale 1/4, the kept square is source x in [100, 300).
    img = np.zeros((200, 400, 3), np.uint8)
    img[:, :100] = (255, 0, 0)  # cropped away
    img[:, 300:] = (0, 0, 255)  # cropped away
    img[:, 100:300] = 255
    img[:, 180:220] = 0  # a bar 40 px wide centred at x=200 -> 10 px centred at 25
    if portrait:
        img = img.transpose(1, 0, 2).copy()
    out = load_image(_png(tmp_path / "x.png", img), 50)
    assert out.shape == (50, 50, 3)
    if portrait:
        out = out.transpose(1, 0, 2)
    lum = out.astype(np.float64).mean(axis=(0, 2))  # per output column
    assert np.all(out[:, 3:17] >= 250) and np.all(out[:, 33:47] >= 250)  # white, no red/blue
    assert np.all(out[:, 21:29] <= 5)  # the bar
    darkness = 255.0 - lum[10:40]
    centroid = 10 + (darkness * np.arange(30)).sum() / darkness.sum()
    assert abs(centroid - 24.5) < 0.05  # pixel centres: columns 20..29 -> 24.5


def test_jpeg_and_upscale(tmp_path):
    big = np.zeros((600, 900, 3), np.uint8)
    big[...] = (30, 160, 90)
    Image.fromarray(big).save(tmp_path / "b.jpg", quality=95)
    out = load_image(str(tmp_path / "b.jpg"), 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (30, 160, 90), atol=3)
    small = np.zeros((10, 20, 3), np.uint8)
    small[:, 10:] = 255
    # the kept square is x in [5, 15): 5 dark then 5 light columns, scaled x4
    up = load_image(_png(tmp_path / "s.png", small), 40)
    assert up.shape == (40, 40, 3)
    assert up[:, :15].max() < 30 and up[:, 25:].min() > 225


def test_corrupt_and_missing_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(BadInput) as e:
        load_image(str(bad), 8)
    assert e.value.reason == "corrupt_image" and e.value.file == str(bad)
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(buf, format="PNG")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadInput, match="corrupt_image"):
        load_image(str(truncated), 8)
    with pytest.raises(BadInput) as e:
        load_image(str(tmp_path / "nope.png"), 8)
    assert e.value.reason == "missing_file"
    assert decode_image_bytes(buf.getvalue(), None).shape == (64, 64, 3)


# ----------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    "fmt,subtype,ext,tol",
    [
        ("WAV", "PCM_16", "wav", 1e-3),
        ("FLAC", "PCM_16", "flac", 1e-3),
        ("OGG", "VORBIS", "ogg", None),
    ],
)
def test_stereo_is_downmixed(tmp_path, fmt, subtype, ext, tol):
    rate = 16000
    left = _sine(300, rate, 1.0, amp=0.6)
    right = _sine(700, rate, 1.0, amp=0.2)
    path = tmp_path / f"s.{ext}"
    sf.write(path, np.stack([left, right], axis=1), rate, format=fmt, subtype=subtype)
    out = load_audio(str(path), rate, rate)
    expected = (left + right) / 2
    assert out.shape == (rate,) and out.dtype == np.float32
    if tol is not None:
        np.testing.assert_allclose(out, expected, atol=tol)
    else:  # lossy: compare the signal, away from codec start-up
        corr = np.corrcoef(out[2000:-2000], expected[2000:-2000])[0, 1]
        assert corr > 0.99
        assert abs(np.std(out[2000:-2000]) / np.std(expected[2000:-2000]) - 1) < 0.05


def test_resample_keeps_frequency_and_removes_what_cannot_be_represented(tmp_path):
    src_rate, dst_rate = 22050, 16000
    # 1 kHz stays; 9.5 kHz is above the new Nyquist (8 kHz) and would alias to 6.5 kHz.
    x = _sine(1000, src_rate, 1.0, amp=0.5) + _sine(9500, src_rate, 1.0, amp=0.3)
    path = tmp_path / "t.wav"
    sf.write(path, x, src_rate, subtype="FLOAT")
    out = load_audio(str(path), dst_rate, dst_rate)
    assert out.shape == (dst_rate,)
    spectrum = np.abs(np.fft.rfft(out)) / (dst_rate / 2)  # 1 Hz bins; a sine of amp A -> A
    assert int(np.argmax(spectrum)) == 1000
    assert abs(spectrum[1000] - 0.5) < 0.01
    assert spectrum[6500] < 1e-3  # no alias
    np.testing.assert_allclose(
        out[1000:-1000], _sine(1000, dst_rate, 1.0, amp=0.5)[1000:-1000], atol=2e-3
    )


def test_partial_read_equals_full_resample_then_cut(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(44100 * 3).astype(np.float32) * 0.1
    path = tmp_path / "n.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    out = load_audio(str(path), 16000, 8000)  # reads only the first ~0.5 s
    full = resample_poly(x.astype(np.float64), 160, 441)[:8000]
    np.testing.assert_allclose(out, full, atol=1e-5)
    np.testing.assert_allclose(resample(x, 44100, 16000), resample_poly(x, 160, 441), atol=1e-5)


def test_pad_and_cut(tmp_path):
    x = _sine(440, 16000, 0.25)
    path = tmp_path / "short.flac"
    sf.write(path, x, 16000, subtype="PCM_24")
    padded = load_audio(str(path), 16000, 16000)
    np.testing.assert_allclose(padded[:4000], x, atol=1e-5)
    assert np.all(padded[4000:] == 0)
    cut = load_audio(str(path), 16000, 1000)
    np.testing.assert_allclose(cut, x[:1000], atol=1e-5)


def test_bad_audio(tmp_path):
    x = _sine(440, 16000, 1.0)
    full = tmp_path / "full.wav"
    sf.write(full, x, 16000, subtype="PCM_16")
    data = full.read_bytes()
    (tmp_path / "trunc.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.flac").write_bytes(b"fLaC" + b"\x00" * 50)
    sf.write(tmp_path / "empty.wav", np.zeros((0,), np.float32), 16000)
    sf.write(tmp_path / "full.flac", x, 16000)
    flac = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "trunc.flac").write_bytes(flac[: len(flac) // 2])
    cases = {
        "trunc.wav": "corrupt_audio",
        "garbage.flac": "corrupt_audio",
        "trunc.flac": "corrupt_audio",
        "empty.wav": "empty_audio",
        "missing.ogg": "missing_file",
    }
    for name, reason in cases.items():
        with pytest.raises(BadInput) as e:
            load_audio(str(tmp_path / name), 16000, 16000)
        assert e.value.reason == reason, name
        assert e.value.file == str(tmp_path / name)
    assert load_audio(str(full), 16000, 16000).shape == (16000,)
