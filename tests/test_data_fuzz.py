"""Data fuzzing (issue 15, item 5): random manifests of good and bad files and lines, and random
latent shards with corrupt records, read by the σ-VAE streams, the encoder and ``latentlm train``.

Hypothesis draws a JSONL manifest line by line: good images (six formats, six pixel modes, right
or wrong file extensions) and audio (WAV / FLAC, PCM or float, mono or stereo, three rates),
text, and every kind of bad input the readers know: corrupt, truncated and empty files, files of
another kind under an image / audio extension, images whose header declares up to 2^31 × 2^31
pixels, missing files and directories, fields of the wrong type or URLs of schemes no filesystem
reads, absurd audio sample rates, empty and lone-surrogate text, non-UTF-8 bytes, broken JSON,
JSON that is not an object, lines without any known key, blank lines, CRLF endings and a missing
final newline. An oracle that knows what each line is computes what each reader must do; the
properties:

- under ``data.bad_input=skip`` nothing raises; every bad example read is counted once under its
  reason (the counts the batches carry, or ``encode``'s ``stats["skipped"]``), and the good ones
  are all used, in stream order, with the pixels / samples of their files;
- under ``error`` the first bad example stops the reader, after the batches before it, with one
  line naming its reason, manifest line and file;
- an image over ``data.max_image_pixels`` is ``too_large`` from its header: never decoded; a
  clip whose header's sample rate needs an unbounded resampling filter is ``corrupt_audio``;
- a latent shard's records that are not latent records, or that flipped bytes damage, are
  ``corrupt_record`` (the others read back exact); a shard damaged as a whole is a one-line
  ``ConfigError``.

Settings: deterministic (``derandomize``), few examples in CI; ``LATENTLM_FULL_FAULTS=1`` runs
many more (``LATENTLM_FULL_FAULTS=1 pytest tests/test_data_fuzz.py``).
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field

import msgpack
import numpy as np
import pytest
import soundfile as sf
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentlm_jax.cli.encode import media_examples
from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.array_record_source import LatentArrayRecordSource, encode_record
from latentlm_jax.data.bad_input import (
    SKIP_COUNTS_KEY,
    BadInput,
    BadInputPolicy,
    DataError,
    SkippingSource,
)
from latentlm_jax.data.encode_latents import encode_dataset
from latentlm_jax.data.media import MAX_RESAMPLE_FACTOR, load_audio, load_image
from latentlm_jax.data.pipeline import make_source
from latentlm_jax.vae.image import ImageVAE
from latentlm_jax.vae.task import AudioVAETask, ImageVAETask
from tests.helpers import FULL_FAULTS, config_path, latentlm_command, one_device_env, read_metrics


def fuzz_settings(ci: int, full: int) -> settings:
    """Deterministic: the same examples on every run (``derandomize``), no example database."""
    return settings(max_examples=full if FULL_FAULTS else ci, derandomize=True, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


RES = 32  # σ-VAE image resolution
MAX_PIXELS = 64 * 64  # data.max_image_pixels of the fuzzed runs
RATE, SAMPLES = 8000, 800  # the audio σ-VAE's rate and clip length
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------------------ the line specs
# A spec is plain data (hypothesis shrinks it); `build_manifest` writes the files it names.
# Media fields: None (absent), ("good", ...) or (<bad kind>, ...); the oracle maps each kind to
# the reason its reader must give.

IMAGE_MODES = {"PNG": ("RGB", "L", "RGBA", "P", "LA", "I;16"), "JPEG": ("RGB", "L"),
               "BMP": ("RGB", "L", "P"), "GIF": ("RGB", "L"), "WEBP": ("RGB", "RGBA"),
               "TIFF": ("RGB", "L", "RGBA")}
RIGHT_EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp",
             "TIFF": ".tif"}
WRONG_EXTS = (".png", ".jpeg", ".wav", ".bin", "", ".PNG", ".txt")
# (URLs of schemes the path layer has no filesystem for: refused without any network access)
BAD_FIELD_VALUES = (5, "", "   ", [], {"path": "a.png"}, True, 1.5, "http://example.com/a.png",
                    "file:///etc/hostname", "ftp://host/clip.wav")

seeds = st.integers(0, 2**16)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """``st.one_of`` with integer weights (one_of draws its branches evenly)."""
    options = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(options) - 1).flatmap(lambda i: options[i])


def image_specs() -> st.SearchStrategy:
    good = st.tuples(st.just("good"), st.sampled_from(sorted(IMAGE_MODES)), st.integers(0, 5),
                     st.integers(1, 64), st.integers(1, 64), st.booleans(),
                     st.sampled_from(WRONG_EXTS), seeds)
    over = st.integers(65, 120).flatmap(lambda w: st.tuples(
        st.just("over_limit"), st.just(w), st.integers(MAX_PIXELS // w + 1, 120), seeds))
    huge = st.integers(1, 2**31 - 1).flatmap(lambda w: st.tuples(
        st.just("huge_header"), st.just(w), st.integers(MAX_PIXELS // w + 1, 2**31 - 1)))
    truncated = st.tuples(st.just("truncated"), st.sampled_from(["PNG", "JPEG"]),
                          st.integers(8, 32), st.integers(8, 32), seeds,
                          st.floats(0.0, 0.5, exclude_max=False))
    garbage = st.tuples(st.just("garbage"), st.sampled_from([PNG_SIGNATURE, b"\xff\xd8\xff"]),
                        st.binary(max_size=64))
    return weighted(
        (6, good), (1, over), (1, huge), (1, truncated), (1, garbage),
        (1, st.tuples(st.sampled_from(["empty_file", "text_as_image", "wav_as_image", "missing",
                                       "directory"]))),
        (1, st.tuples(st.just("bad_field"), st.sampled_from(range(len(BAD_FIELD_VALUES))))))


def audio_specs() -> st.SearchStrategy:
    good = st.tuples(st.just("good"), st.sampled_from(["PCM_16", "FLOAT", "FLAC"]),
                     st.sampled_from([8000, 11025, 16000]), st.integers(1, 2),
                     st.integers(1, 2000), st.booleans(), seeds)
    truncated = st.tuples(st.just("truncated"), st.sampled_from(["PCM_16", "FLOAT"]),
                          st.integers(10, 2000), st.floats(0.0, 1.0, exclude_max=True))
    garbage = st.tuples(st.just("garbage"), st.sampled_from([b"RIFF", b"fLaC", b"OggS"]),
                        st.binary(max_size=64))
    # rates ≡ 1 (mod 10) are coprime with 8000 Hz: the factor is the rate itself
    absurd_rate = st.tuples(st.just("absurd_rate"), st.integers(
        MAX_RESAMPLE_FACTOR // 10 + 1, (2**31 - 2) // 10).map(lambda k: 10 * k + 1))
    return weighted(
        (5, good), (1, truncated), (1, garbage), (1, absurd_rate),
        (1, st.tuples(st.sampled_from(["empty_file", "no_frames", "nan_samples", "png_as_audio",
                                       "missing", "directory"]))),
        (1, st.tuples(st.just("bad_field"), st.sampled_from(range(len(BAD_FIELD_VALUES))))))


GOOD_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20).filter(
    str.strip)
BAD_TEXTS = (("", "empty_text"), (" \t ", "empty_text"), (7, "bad_field"), (["a"], "bad_field"),
             (False, "bad_field"), ("caf\udc80", "invalid_utf8"))
text_specs = st.one_of(st.none(), st.tuples(st.just("good"), GOOD_TEXT),
                       st.tuples(st.just("bad"), st.sampled_from(range(len(BAD_TEXTS)))))

BROKEN_LINES = (
    (b'{"text": "caf\xe9", "image": "x.png"}', "invalid_utf8"),  # Latin-1
    (b'{"text": "\xff\xfe"}', "invalid_utf8"),
    (b'{"text": "\xed\xa0\x80"}', "invalid_utf8"),  # an encoded surrogate
    (b'{"image": "\xc0\xaf.png"}', "invalid_utf8"),  # overlong
    (b'["text", "image"]', "bad_json"), (b"null", "bad_json"), (b'"just a string"', "bad_json"),
    (b"3.5", "bad_json"), (b"NaN", "bad_json"), (b"{'text': 'single quotes'}", "bad_json"),
    (b"{}", "missing_keys"), (b'{"caption": "wrong key"}', "missing_keys"),
    (b'{"text": null, "image": null, "audio": null}', "missing_keys"),
)
object_lines = st.tuples(st.just("object"), text_specs, st.one_of(st.none(), image_specs()),
                         st.one_of(st.none(), audio_specs()), st.booleans())
line_specs = weighted(
    (6, object_lines),
    (1, st.tuples(st.just("broken"), st.sampled_from(range(len(BROKEN_LINES))))),
    (1, st.tuples(st.just("cut_json"), st.floats(0.0, 1.0, exclude_max=True))),
    (1, st.tuples(st.just("blank"), st.sampled_from([b"", b"   ", b"\t\r"]))),
)
manifests = st.tuples(st.lists(line_specs, min_size=3, max_size=16), st.booleans(), st.booleans())

# Every kind of line at least once: run as an explicit example of each property (hypothesis's
# random ones come on top).
ALL_KINDS = [
    *[("object", ("good", f"{fmt} {m}"), ("good", fmt, m, 9 + m, 7, m % 2 == 0, WRONG_EXTS[m], m),
       None, m % 2 == 1) for fmt in sorted(IMAGE_MODES) for m in range(len(IMAGE_MODES[fmt]))],
    ("object", None, ("over_limit", 65, 64, 1), None, True),
    ("object", None, ("huge_header", 2**31 - 1, 2**31 - 1), None, True),
    ("object", None, ("huge_header", 12000, 12000), None, True),
    ("object", None, ("truncated", "PNG", 16, 16, 2, 0.4), None, True),
    ("object", None, ("truncated", "JPEG", 16, 16, 3, 0.2), None, True),
    ("object", None, ("garbage", PNG_SIGNATURE, b"\0\0\0\rIHDR"), None, True),
    *[("object", None, (kind,), None, True)
      for kind in ("empty_file", "text_as_image", "wav_as_image", "missing", "directory")],
    *[("object", None, ("bad_field", i), None, True) for i in range(len(BAD_FIELD_VALUES))],
    *[("object", ("good", "tone"), None, ("good", sub, rate, ch, 300, right, 4), True)
      for sub, rate, ch, right in (("PCM_16", 8000, 1, True), ("FLOAT", 16000, 2, False),
                                   ("FLAC", 11025, 1, False), ("FLAC", 16000, 2, True))],
    ("object", None, None, ("truncated", "PCM_16", 500, 0.9), True),
    ("object", None, None, ("truncated", "FLOAT", 500, 0.03), True),
    ("object", None, None, ("garbage", b"RIFF", b"\xff" * 8 + b"WAVE"), True),
    ("object", None, None, ("absurd_rate", 1_000_003), True),
    ("object", None, None, ("absurd_rate", 1_999_999_973), True),
    *[("object", None, None, (kind,), True)
      for kind in ("empty_file", "no_frames", "nan_samples", "png_as_audio", "missing",
                   "directory")],
    *[("object", None, None, ("bad_field", i), True) for i in range(len(BAD_FIELD_VALUES))],
    *[("object", ("bad", i), ("good", "PNG", 0, 5, 5, True, "", i), ("missing",), True)
      for i in range(len(BAD_TEXTS))],
    *[("broken", i) for i in range(len(BROKEN_LINES))],
    ("cut_json", 0.0), ("cut_json", 0.7),
    ("blank", b""), ("blank", b"  "),
    ("object", None, None, None, True),
    ("object", ("good", "text only, é ✓"), None, None, False),
]

IMAGE_REASONS = {"over_limit": "too_large", "huge_header": "too_large",
                 "truncated": "corrupt_image", "garbage": "corrupt_image",
                 "empty_file": "corrupt_image", "text_as_image": "corrupt_image",
                 "wav_as_image": "corrupt_image", "missing": "missing_file",
                 "directory": "missing_file", "bad_field": "bad_field"}
AUDIO_REASONS = {"truncated": "corrupt_audio", "garbage": "corrupt_audio",
                 "absurd_rate": "corrupt_audio",
                 "empty_file": "corrupt_audio", "no_frames": "empty_audio",
                 "nan_samples": "corrupt_audio", "png_as_audio": "corrupt_audio",
                 "missing": "missing_file", "directory": "missing_file",
                 "bad_field": "bad_field"}


@dataclass
class Example:
    """What one non-blank line is to each reader: ``None`` = good, else the reason (``no_image``
    / ``no_audio`` for a line without that field); the good media's files; the caption."""

    line: int
    image: str | None
    audio: str | None
    encode: str | None  # the image encoder's view: image reason first, then the caption's
    image_file: str | None = None
    audio_file: str | None = None
    caption: str = ""
    file: dict[str, str] = field(default_factory=dict)  # reason's offending file, by reader


# ------------------------------------------------------------------------------ writing files
def _pixels(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode) if mode != "P" else rgba.convert("RGB").convert("P")


def _encoded_image(fmt: str, mode: str, w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    _pixels(mode, w, h, seed).save(buf, fmt)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A 1×1 PNG whose IHDR (CRC fixed) declares ``width × height`` pixels."""
    data = bytearray(_encoded_image("PNG", "RGB", 1, 1, 0))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A 1×1 BMP whose info header declares ``width × height`` pixels."""
    data = bytearray(_encoded_image("BMP", "RGB", 1, 1, 0))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A 1×1 GIF whose screen and frame descriptors declare ``width × height`` pixels."""
    data = bytearray(_encoded_image("GIF", "L", 1, 1, 0))
    data[6:10] = struct.pack("<HH", width, height)
    frame = data.index(b",", 13)  # the image descriptor
    data[frame + 5:frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


DECLARING = {"PNG": (png_declaring, 2**31 - 1), "BMP": (bmp_declaring, 2**31 - 1),
             "GIF": (gif_declaring, 2**16 - 1)}  # format: (writer, largest side)


def _wav_bytes(subtype: str, rate: int, samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fmt = "FLAC" if subtype == "FLAC" else "WAV"
    sf.write(buf, samples, rate, format=fmt, subtype="PCM_16" if subtype == "FLAC" else subtype)
    return buf.getvalue()


def _write(root: str, name: str, data: bytes) -> str:
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_image(root: str, k: int, spec: tuple) -> tuple[object, str | None]:
    """Writes the file of an image spec: (the manifest value, the file path or None)."""
    kind = spec[0]
    name = f"img{k}"
    if kind == "good":
        _, fmt, mode_i, w, h, right, wrong, seed = spec
        mode = IMAGE_MODES[fmt][mode_i % len(IMAGE_MODES[fmt])]
        ext = RIGHT_EXT[fmt] if right else wrong
        return name + ext, _write(root, name + ext, _encoded_image(fmt, mode, w, h, seed))
    if kind == "over_limit":
        _, w, h, seed = spec
        return name + ".png", _write(root, name + ".png", _encoded_image("PNG", "RGB", w, h, seed))
    if kind == "huge_header":
        return name + ".png", _write(root, name + ".png", png_declaring(spec[1], spec[2]))
    if kind == "truncated":
        _, fmt, w, h, seed, frac = spec
        data = _encoded_image(fmt, "RGB", w, h, seed)
        return name + RIGHT_EXT[fmt], _write(root, name + RIGHT_EXT[fmt],
                                             data[:int(len(data) * frac)])
    if kind == "garbage":
        return name + ".png", _write(root, name + ".png", spec[1] + spec[2])
    if kind == "empty_file":
        return name + ".png", _write(root, name + ".png", b"")
    if kind == "text_as_image":
        return name + ".png", _write(root, name + ".png", b"a caption, not an image\n")
    if kind == "wav_as_image":
        data = _wav_bytes("PCM_16", RATE, np.zeros(100, np.float32))
        return name + ".png", _write(root, name + ".png", data)
    if kind == "missing":
        return name + ".png", os.path.join(root, name + ".png")
    if kind == "directory":
        os.makedirs(os.path.join(root, name + ".png"))
        return name + ".png", os.path.join(root, name + ".png")
    assert kind == "bad_field"
    return BAD_FIELD_VALUES[spec[1]], None


def write_audio(root: str, k: int, spec: tuple) -> tuple[object, str | None]:
    kind = spec[0]
    name = f"aud{k}"
    if kind == "good":
        _, subtype, rate, channels, frames, right, seed = spec
        rng = np.random.default_rng(seed)
        samples = rng.uniform(-0.9, 0.9, (frames, channels)).astype(np.float32)
        ext = (".flac" if subtype == "FLAC" else ".wav") if right else \
            (".wav" if subtype == "FLAC" else ".flac")  # the wrong one: read by content
        return name + ext, _write(root, name + ext, _wav_bytes(subtype, rate, samples))
    if kind == "truncated":
        _, subtype, frames, frac = spec
        data = _wav_bytes(subtype, RATE, np.full(frames, 0.25, np.float32))
        return name + ".wav", _write(root, name + ".wav", data[:int(len(data) * frac)])
    if kind == "garbage":
        return name + ".wav", _write(root, name + ".wav", spec[1] + spec[2])
    if kind == "absurd_rate":  # a PCM_16 mono WAV whose header declares this sample rate
        data = bytearray(_wav_bytes("PCM_16", RATE, np.full(100, 0.25, np.float32)))
        data[24:32] = struct.pack("<II", spec[1], (2 * spec[1]) & 0xFFFFFFFF)
        return name + ".wav", _write(root, name + ".wav", bytes(data))
    if kind == "empty_file":
        return name + ".wav", _write(root, name + ".wav", b"")
    if kind == "no_frames":
        return name + ".wav", _write(root, name + ".wav",
                                     _wav_bytes("FLOAT", RATE, np.zeros(0, np.float32)))
    if kind == "nan_samples":
        samples = np.full(200, 0.1, np.float32)
        samples[50] = np.nan
        return name + ".wav", _write(root, name + ".wav", _wav_bytes("FLOAT", RATE, samples))
    if kind == "png_as_audio":
        return name + ".wav", _write(root, name + ".wav", _encoded_image("PNG", "RGB", 4, 4, 0))
    if kind == "missing":
        return name + ".wav", os.path.join(root, name + ".wav")
    if kind == "directory":
        os.makedirs(os.path.join(root, name + ".wav"))
        return name + ".wav", os.path.join(root, name + ".wav")
    assert kind == "bad_field"
    return BAD_FIELD_VALUES[spec[1]], None


ANCHOR = ("object", ("good", "anchor"), ("good", "PNG", 0, 20, 30, True, "", 1),
          ("good", "PCM_16", RATE, 1, 900, True, 2), False)


def build_manifest(root: str, specs: list, crlf: bool, final_newline: bool
                   ) -> tuple[str, list[Example]]:
    """Writes the manifest (plus one good line at the end, so that every reader's last example
    is good) and its files; returns its path and what each non-blank line is."""
    raws: list[bytes] = []
    examples: list[Example] = []
    for k, spec in enumerate([*specs, ANCHOR]):
        line = len(raws) + 1
        if spec[0] == "blank":
            raws.append(spec[1])
            continue
        if spec[0] == "broken":
            raw, reason = BROKEN_LINES[spec[1]]
            examples.append(Example(line, reason, reason, reason))
        elif spec[0] == "cut_json":
            full = json.dumps({"text": "a caption", "image": f"img{k}.png"}).encode()
            raw = full[:1 + int((len(full) - 1) * spec[1])]  # a proper prefix of an object
            examples.append(Example(line, "bad_json", "bad_json", "bad_json"))
        else:
            raw, example = _object_line(root, k, line, spec)
            examples.append(example)
        raws.append(raw + (b"\r" if crlf else b""))
    data = b"\n".join(raws) + (b"\n" if final_newline else b"")
    return _write(root, "manifest.jsonl", data), examples


def _object_line(root: str, k: int, line: int, spec: tuple) -> tuple[bytes, Example]:
    _, text, image, audio, ascii_only = spec
    obj: dict = {"id": k}
    text_reason, caption = None, ""
    if text is not None:
        if text[0] == "good":
            obj["text"] = caption = text[1]
        else:
            obj["text"], text_reason = BAD_TEXTS[text[1]]
    ex = Example(line, "no_image", "no_audio", None)
    if image is not None:
        obj["image"], path = write_image(root, k, image)
        ex.image = None if image[0] == "good" else IMAGE_REASONS[image[0]]
        if ex.image is None:
            ex.image_file = path
        elif path is not None:
            ex.file["image"] = path
    if audio is not None:
        obj["audio"], path = write_audio(root, k, audio)
        ex.audio = None if audio[0] == "good" else AUDIO_REASONS[audio[0]]
        if ex.audio is None:
            ex.audio_file = path
        elif path is not None:
            ex.file["audio"] = path
    if text is None and image is None and audio is None:
        obj["note"] = "no known key"  # a line without text, image and audio
        ex.image = ex.audio = ex.encode = "missing_keys"
    elif image is None:
        ex.encode = "without"
    else:
        ex.encode = ex.image or text_reason
        ex.caption = caption
    raw = json.dumps(obj, ensure_ascii=ascii_only or text_reason == "invalid_utf8").encode(
        "utf-8")
    return raw, ex


# ------------------------------------------------------------------------------ the oracle
NOT_APPLICABLE = ("no_image", "no_audio")


def simulate_stream(examples: list[Example], key: str, rows: int, process_index: int,
                    process_count: int) -> tuple[list[list[int]], dict[str, int], bool]:
    """vae/data.py's documented stream (no shuffle): this process's batches (example indices)
    until it has read its whole first epoch, the reasons of the bad examples those batches
    read, and whether the process then meets no usable example in ``len(examples)`` reads in a
    row (its positions hold none: the stream's "no usable" error)."""
    n = len(examples)
    batches, counts, position, misses = [], {}, process_index, 0
    while position < n:
        batch, batch_counts = [], {}
        while len(batch) < rows:
            i = position % n
            position += process_count
            reason = getattr(examples[i], key)
            if reason is None:
                batch.append(i)
                misses = 0
            else:
                batch_counts[reason] = batch_counts.get(reason, 0) + 1
                misses += 1
                if misses >= n:
                    return batches, counts, True
        batches.append(batch)
        for reason, k in batch_counts.items():
            counts[reason] = counts.get(reason, 0) + k
    return batches, counts, False


def first_error(examples: list[Example], key: str) -> int | None:
    """The index of the first example this reader refuses under ``error``."""
    return next((i for i, ex in enumerate(examples)
                 if getattr(ex, key) not in (None, "without", *NOT_APPLICABLE)), None)


def assert_error_line(message: str, manifest: str, ex: Example, reason: str,
                      media: str | None) -> None:
    assert "\n" not in message
    assert message.startswith(f"bad input ({reason}) at manifest {manifest} line {ex.line}"), (
        message)
    if media is not None and media in ex.file and reason == getattr(ex, media):
        assert f"file {ex.file[media]}" in message, message


# ------------------------------------------------------------------------------ configs
def stream_config(task: str, manifest: str, bad_input: str, batch: int, prefetch: int,
                  workers: int):
    c = base_config()
    c.task = task
    c.vae.image.channels, c.vae.image.channel_mult = 8, (1, 2)
    c.vae.audio.sample_rate, c.vae.audio.num_samples = RATE, SAMPLES
    d = c.data
    d.source, d.manifest, d.bad_input, d.shuffle = "manifest", manifest, bad_input, False
    d.max_image_pixels, d.sample_rate, d.audio_samples = MAX_PIXELS, RATE, SAMPLES
    d.prefetch, d.num_workers = prefetch, workers
    c.train.global_batch_size = batch
    return c


READERS = {"image": (ImageVAETask, "vae_image"), "audio": (AudioVAETask, "vae_audio")}


def _expected_value(key: str, ex: Example) -> np.ndarray:
    if key == "image":
        return load_image(ex.image_file, RES, MAX_PIXELS)
    return load_audio(ex.audio_file, RATE, SAMPLES)


# ------------------------------------------------------------------------------ σ-VAE streams
@fuzz_settings(ci=25, full=2000)
@given(manifests, st.sampled_from(["image", "audio"]), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 2), st.integers(0, 2))
@example((ALL_KINDS, True, False), "image", 2, 2, 1, 2)
@example((ALL_KINDS, False, True), "audio", 3, 1, 0, 0)
def test_vae_stream_over_a_fuzzed_manifest(manifest_spec, key, rows, processes, prefetch,
                                           workers):
    """Skip: the batches are the good examples in stream order, with their files' pixels /
    samples, and carry each bad example's reason once; error: the first bad one stops it."""
    task_cls, task = READERS[key]
    with tempfile.TemporaryDirectory() as root:
        manifest, examples = build_manifest(root, *manifest_spec)
        for p in range(processes):
            c = stream_config(task, manifest, "skip", rows * processes, prefetch, workers)
            it = task_cls().train_iterator(c, p, processes)
            want_batches, want_counts, exhausted = simulate_stream(examples, key, rows, p,
                                                                   processes)
            counts: dict[str, int] = {}
            try:
                for want in want_batches:
                    batch = next(it)
                    for k, n in batch.pop(SKIP_COUNTS_KEY, {}).items():
                        reason = k.removeprefix("data/skipped/")
                        counts[reason] = counts.get(reason, 0) + n
                    expected = np.stack([_expected_value(key, examples[i]) for i in want])
                    np.testing.assert_array_equal(batch[key], expected)
                if exhausted:  # this process's positions hold no usable example
                    with pytest.raises(DataError, match=f"^no usable {key} in "):
                        next(it)
            finally:
                it.close()
            assert counts == want_counts

        bad = first_error(examples, key)
        if bad is None:
            return
        c = stream_config(task, manifest, "error", rows, prefetch, workers)
        it = task_cls().train_iterator(c, 0, 1)
        good_before = sum(getattr(ex, key) is None for ex in examples[:bad])
        try:
            for _ in range(good_before // rows):  # the batches before the bad example
                assert len(next(it)[key]) == rows
            with pytest.raises(DataError) as e:
                next(it)
        finally:
            it.close()
        assert_error_line(str(e.value), manifest, examples[bad], getattr(examples[bad], key), key)


# ------------------------------------------------------------------------------ encoding
@pytest.fixture(scope="module")
def image_vae():
    v = base_config().vae
    v.image.channels, v.image.channel_mult = 8, (1, 2)
    return ImageVAE(v, rngs=nnx.Rngs(0))


@fuzz_settings(ci=6, full=400)
@given(manifests)
@example((ALL_KINDS, False, True))
def test_encoding_a_fuzzed_manifest(image_vae, manifest_spec):
    """Skip: every good image is encoded (in order, with its caption), each bad example is
    counted once by reason, lines without an image apart; error: the first bad one stops it
    before anything is written."""
    with tempfile.TemporaryDirectory() as root:
        manifest, examples = build_manifest(root, *manifest_spec)
        c = stream_config("vae_image", manifest, "skip", 1, 0, 0)
        out = os.path.join(root, "out")
        stats = encode_dataset(image_vae, "vae_image", media_examples(c, "vae_image"), out,
                               num_examples=len(examples), batch_size=4, bad_input="skip")
        good = [i for i, ex in enumerate(examples) if ex.encode is None]
        want: dict[str, int] = {}
        for ex in examples:
            if ex.encode not in (None, "without"):
                want[ex.encode] = want.get(ex.encode, 0) + 1
        assert stats["skipped"] == want
        assert stats["without_modality"] == sum(ex.encode == "without" for ex in examples)
        assert stats["encoded"] == len(good)
        src = LatentArrayRecordSource(os.path.join(out, stats["shards"][0]))
        assert [src[i]["index"] for i in range(len(src))] == good
        assert [src[i]["caption"] for i in range(len(src))] == [examples[i].caption
                                                                for i in good]

        bad = first_error(examples, "encode")
        if bad is not None:
            with pytest.raises(DataError) as e:
                encode_dataset(image_vae, "vae_image", media_examples(c, "vae_image"),
                               os.path.join(root, "out_error"), num_examples=len(examples),
                               batch_size=4, bad_input="error")
            assert_error_line(str(e.value), manifest, examples[bad], examples[bad].encode,
                              "image")
            assert not os.path.exists(os.path.join(root, "out_error"))


# ------------------------------------------------------------------------------ pixel limit
@fuzz_settings(ci=40, full=5000)
@given(st.sampled_from(sorted(DECLARING)).flatmap(lambda fmt: st.tuples(
    st.just(fmt), st.integers(1, DECLARING[fmt][1]), st.integers(1, DECLARING[fmt][1]))))
@example(("PNG", 2**31 - 1, 2**31 - 1))
@example(("GIF", 65, 64))
@example(("BMP", 1, 2))
def test_pixel_limit_is_checked_from_the_header(spec):
    """Any declared size over data.max_image_pixels is too_large, up to 2^31 × 2^31 pixels,
    without decoding: the file holds one pixel (a decode attempt would be corrupt_image) and the
    process's peak memory does not grow by what the declared pixels would take."""
    fmt, width, height = spec
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with tempfile.TemporaryDirectory() as root:
        path = _write(root, "x." + fmt.lower(), DECLARING[fmt][0](width, height))
        if width * height <= MAX_PIXELS:  # decoded: missing data is an error or padding
            try:
                assert load_image(path, RES, MAX_PIXELS).shape == (RES, RES, 3)
            except BadInput as e:
                assert e.reason == "corrupt_image" and e.file == path, (spec, e)
            return
        with pytest.raises(BadInput) as e:
            load_image(path, RES, MAX_PIXELS)
    assert e.value.reason == "too_large" and e.value.file == path, (spec, e.value)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 200 * 1024, f"peak memory grew by {grown // 1024} MiB"


# ------------------------------------------------------------------------------ latent shards
def _good_record(seed: int, n: int, dim: int) -> dict:
    latents = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return {"latents": latents, "caption": f"c{seed}", "modality": "image"}


def _bad_record(kind: int, payload: bytes) -> bytes:
    arr = msgpack.ExtType(1, msgpack.packb(["<f4", [2, 3], b"\0" * 24]))
    good = encode_record(_good_record(0, 2, 3))
    return [
        payload,  # random bytes
        good[:len(good) // 2],  # a truncated record
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({"caption": "no latents", "modality": "image"}),
        msgpack.packb({"latents": msgpack.ExtType(1, msgpack.packb(["<f4", [24], b"\0" * 96])),
                       "caption": "", "modality": "image"}),  # latents [N] not [N, D]
        msgpack.packb({"latents": msgpack.ExtType(1, msgpack.packb(["<f4", [4, 4], b"\0" * 8])),
                       "caption": "", "modality": "image"}),  # fewer bytes than the shape
        msgpack.packb({"latents": msgpack.ExtType(7, b"??"), "caption": ""}),  # unknown ext
        msgpack.packb({"latents": msgpack.ExtType(1, msgpack.packb(["|O", [1, 1], b"\0" * 8])),
                       "caption": ""}),  # object dtype
        msgpack.packb({"latents": arr, 5: "a key that is not a string"}),
    ][kind]


record_specs = st.one_of(
    st.tuples(st.just("good"), seeds, st.integers(1, 6), st.integers(1, 4)),
    st.tuples(st.just("bad"), st.integers(0, 8), st.binary(max_size=48)))


@fuzz_settings(ci=30, full=3000)
@given(st.lists(record_specs, min_size=1, max_size=12), st.none() | st.integers(0, 2**20))
def test_corrupt_latent_shard(specs, flip_at):
    """Records that are not latent records are corrupt_record (counted once each under skip,
    the first one an error naming shard and record); bytes flipped in the file make the records
    they hit corrupt_record and leave the others exact, or the shard unreadable as a whole: a
    one-line ConfigError naming data.latent_files. Never a crash."""
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "s.array_record")
        writer = ArrayRecordWriter(path, "group_size:1")
        good = {}
        for i, spec in enumerate(specs):
            if spec[0] == "good":
                good[i] = _good_record(*spec[1:])
                writer.write(encode_record(good[i]))
            else:
                writer.write(_bad_record(spec[1], spec[2]))
        writer.close()
        if flip_at is not None:
            with open(path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(flip_at % size)
                byte = f.read(1)
                f.seek(flip_at % size)
                f.write(bytes([byte[0] ^ 0xFF]))
        c = base_config()
        c.data.source, c.data.latent_files = "latents", (path,)
        try:
            source = make_source(c)
        except ConfigError as e:
            assert flip_at is not None and e.field == "data.latent_files"
            assert "\n" not in str(e) and "not a readable ArrayRecord file" in str(e)
            return
        assert len(source) == len(specs)
        policy = BadInputPolicy("skip")
        skipping = SkippingSource(source, policy)
        corrupt = []
        for i in range(len(specs)):
            record = skipping[i]
            if record is None:
                corrupt.append(i)
                continue
            assert i in good  # a bad record never reads as a good one
            np.testing.assert_array_equal(record["latents"], good[i]["latents"])
            assert record["caption"] == good[i]["caption"]
        if flip_at is None:
            assert corrupt == [i for i in range(len(specs)) if i not in good]
        else:
            assert set(corrupt) >= {i for i in range(len(specs)) if i not in good}
        assert policy.counts() == ({"data/skipped/corrupt_record": len(corrupt)}
                                   if corrupt else {})
        if corrupt:
            erroring = SkippingSource(source, BadInputPolicy("error"))
            for i in range(corrupt[0]):
                assert erroring[i] is not None
            with pytest.raises(DataError) as e:
                erroring[corrupt[0]]
            msg = str(e.value)
            assert "\n" not in msg
            assert msg.startswith(f"bad input (corrupt_record) at array_record {path} record "
                                  f"{corrupt[0]}"), msg


# ------------------------------------------------------------------------------ the CLI
CLI_SPECS = [
    ("object", ("good", "a"), ("good", "JPEG", 0, 40, 30, False, ".png", 3), None, True),
    ("broken", 0),  # not UTF-8
    ("object", None, ("huge_header", 2**31 - 1, 2**31 - 1), None, True),
    ("object", ("good", "b"), ("truncated", "PNG", 16, 16, 4, 0.3), None, True),
    ("object", ("good", "c"), None, ("good", "PCM_16", RATE, 1, 100, True, 5), True),
    ("cut_json", 0.5),
    ("object", None, ("empty_file",), None, True),
    ("object", None, ("good", "PNG", 3, 64, 64, True, "", 6), None, True),
]


@pytest.mark.slow
def test_latentlm_train_on_a_fuzzed_manifest(tmp_path):
    """``latentlm train`` of a tiny image σ-VAE: under skip it trains, reports the skipped
    examples by reason and logs them in metrics.jsonl; under error it stops at the first bad
    line with one line on stderr and exit status 2."""
    manifest, examples = build_manifest(str(tmp_path), CLI_SPECS, False, True)
    want: dict[str, int] = {}
    for ex in examples:
        if ex.image is not None:
            want[ex.image] = want.get(ex.image, 0) + 1
    assert want == {"invalid_utf8": 1, "too_large": 1, "corrupt_image": 2, "no_image": 1,
                    "bad_json": 1}
    args = [f"--config={config_path('vae_image_tiny.py')}", "--config.vae.image.channels=8",
            "--config.vae.image.channel_mult=(1, 2)", "--config.train.num_steps=1",
            "--config.train.global_batch_size=3", "--config.train.warmup_steps=0",
            "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.metrics.peak_tflops_per_device=1.0", "--config.data.source=manifest",
            f"--config.data.manifest={manifest}", f"--config.data.max_image_pixels={MAX_PIXELS}",
            "--config.data.shuffle=false", "--config.vae.eval_examples=2"]
    skip = subprocess.run(latentlm_command("train", "--workdir", str(tmp_path / "skip"), *args),
                          env=one_device_env(), capture_output=True, text=True, timeout=600)
    assert skip.returncode == 0, skip.stderr[-3000:]
    # one step of 3: the 3 good images (lines 1, 8, 9), every bad line read once on the way
    (row,) = [r for r in read_metrics(tmp_path / "skip") if "loss" in r]
    assert {k.removeprefix("data/skipped/"): v for k, v in row.items()
            if k.startswith("data/skipped/")} == want
    assert ("skipped 1 (bad_json), 2 (corrupt_image), 1 (invalid_utf8), 1 (no_image), "
            "1 (too_large) (data.bad_input='skip'") in skip.stdout + skip.stderr

    error = subprocess.run(latentlm_command("train", "--workdir", str(tmp_path / "error"), *args,
                                            "--config.data.bad_input=error"),
                           env=one_device_env(), capture_output=True, text=True, timeout=600)
    assert error.returncode == 2, error.stderr[-3000:]
    lines = error.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in error.stderr, error.stderr[-3000:]
    assert lines[0].startswith(f"latentlm: error: bad input (invalid_utf8) at manifest "
                               f"{manifest} line 2"), lines[0]
