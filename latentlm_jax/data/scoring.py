"""Automatic scoring of generated *shapes & tones* samples (docs/dataset.md, "Scoring").

- Image: non-white pixels (any channel < 200) form the shape. Color = nearest palette color to
  their per-channel median RGB; position = nearest centre to their centroid; size = small when the
  bounding box's larger side is < 12 px; shape = nearest nominal fill ratio of the bounding box
  (circle π/4 ≈ 0.79, square 1.0, triangle 0.5).
- Audio: the three 0.25 s note windows; a window holds a note when its RMS > 0.05, and its pitch
  is the one of the eight nearest (in semitones) to the FFT peak frequency. Correct when windows
  0 … n-1 hold the n expected pitches and the rest are silent.
- Caption: exact match after stripping surrounding whitespace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentlm_jax.data.shapes_tones import (
    AUDIO_SAMPLES,
    COLORS,
    MAX_NOTES,
    NOTE_LENGTH,
    PITCH_NAMES,
    PITCHES,
    POSITIONS,
    SAMPLE_RATE,
    SHAPES,
    SIZES,
    audio_caption,
    image_caption,
    note_start,
)

ATTRIBUTES = ("color", "shape", "size", "position")
WHITE_THRESHOLD = 200  # a pixel is part of the shape when any channel is below this
SMALL_MAX_SIDE = 12  # bounding box's larger side < 12 px -> small
FILL_RATIOS: dict[str, float] = {"circle": math.pi / 4.0, "square": 1.0, "triangle": 0.5}
NOTE_RMS_THRESHOLD = 0.05
FFT_SIZE = 16384  # zero-padded FFT of a 4000-sample window: ~0.98 Hz bins

_PALETTE = np.array([COLORS[c] for c in COLORS], np.float64)
_COLOR_NAMES = tuple(COLORS)
_CENTRES = np.array([POSITIONS[p] for p in POSITIONS], np.float64)
_POSITION_NAMES = tuple(POSITIONS)
_LOG_PITCHES = np.log2(np.array([PITCHES[p] for p in PITCH_NAMES]))
assert set(FILL_RATIOS) == set(SHAPES)


# ------------------------------------------------------------------------------------ captions

def parse_image_caption(caption: str) -> dict[str, str] | None:
    """``a {size} {color} {shape} in the {position}`` -> attrs dict, or None if it is not one."""
    words = caption.strip().split(" ")
    if len(words) < 6 or words[0] != "a" or words[4:6] != ["in", "the"]:
        return None
    attrs = {"size": words[1], "color": words[2], "shape": words[3],
             "position": " ".join(words[6:])}
    ok = (attrs["size"] in SIZES and attrs["color"] in COLORS and attrs["shape"] in SHAPES
          and attrs["position"] in POSITIONS)
    return attrs if ok and image_caption(**attrs) == caption.strip() else None


def parse_audio_caption(caption: str) -> tuple[str, ...] | None:
    """``notes {p1} …`` (1–3 pitches) -> pitch names, or None if it is not one."""
    words = caption.strip().split(" ")
    pitches = tuple(words[1:])
    if (words[0] != "notes" or not 1 <= len(pitches) <= MAX_NOTES
            or any(p not in PITCHES for p in pitches)):
        return None
    return pitches


def score_caption(generated: str, expected: str) -> bool:
    """Exact match of a generated caption with the true one (surrounding whitespace ignored)."""
    return generated.strip() == expected.strip()


# -------------------------------------------------------------------------------------- images

def to_uint8_image(img: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] from uint8, or floats in [0, 1] (max ≤ 2) or [0, 255] (clipped)."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size and finite.max() <= 2.0:  # a [0, 1] image, possibly overshooting a little
        a = a * 255.0
    a = np.nan_to_num(a, nan=255.0, posinf=255.0, neginf=0.0)  # NaN counts as background
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def classify_image(img: np.ndarray) -> dict[str, str] | None:
    """Predicted attrs of an image, or None when it has no non-white pixel."""
    a = to_uint8_image(img)
    mask = np.any(a < WHITE_THRESHOLD, axis=-1)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    median = np.median(a[rows, cols].astype(np.float64), axis=0)
    color = _COLOR_NAMES[int(np.argmin(np.sum((_PALETTE - median) ** 2, axis=1)))]
    centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # (x, y) of pixel centres
    position = _POSITION_NAMES[int(np.argmin(np.sum((_CENTRES - centroid) ** 2, axis=1)))]
    height = int(rows.max() - rows.min() + 1)
    width = int(cols.max() - cols.min() + 1)
    size = "small" if max(height, width) < SMALL_MAX_SIDE else "large"
    fill = rows.size / (height * width)
    shape = min(FILL_RATIOS, key=lambda s: abs(FILL_RATIOS[s] - fill))
    return {"color": color, "shape": shape, "size": size, "position": position}


def _expected_attrs(expected: Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(expected, str):
        attrs = parse_image_caption(expected)
        if attrs is None:
            raise ValueError(f"not an image caption: {expected!r}")
        return attrs
    return {k: expected[k] for k in ATTRIBUTES}


def score_image(img: np.ndarray, expected_attrs: Mapping[str, str] | str) -> dict[str, Any]:
    """Per-attribute match (bools), ``correct`` (all four match) and the ``predicted`` attrs
    (None for a blank image). ``expected_attrs``: an attrs dict or an image caption."""
    expected = _expected_attrs(expected_attrs)
    predicted = classify_image(img)
    out: dict[str, Any] = {k: predicted is not None and predicted[k] == expected[k]
                           for k in ATTRIBUTES}
    out["correct"] = all(out[k] for k in ATTRIBUTES)
    out["predicted"] = predicted
    return out


# --------------------------------------------------------------------------------------- audio

def _fit_length(wave: np.ndarray) -> np.ndarray:
    w = np.asarray(wave, np.float64).reshape(-1)
    if not np.all(np.isfinite(w)):
        w = np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0)
    if w.size < AUDIO_SAMPLES:
        w = np.pad(w, (0, AUDIO_SAMPLES - w.size))
    return w[:AUDIO_SAMPLES]


def peak_frequency(segment: np.ndarray) -> float:
    """Frequency (Hz) of the largest magnitude of the zero-padded FFT, DC excluded."""
    spectrum = np.abs(np.fft.rfft(segment, n=FFT_SIZE))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * SAMPLE_RATE / FFT_SIZE)


def nearest_pitch(freq: float) -> str:
    """The pitch of the eight nearest to ``freq`` in log frequency (semitones)."""
    return PITCH_NAMES[int(np.argmin(np.abs(_LOG_PITCHES - math.log2(max(freq, 1e-3)))))]


def classify_audio_windows(wave: np.ndarray) -> tuple[str | None, ...]:
    """For each of the three note windows: its pitch, or None when its RMS is ≤ 0.05."""
    w = _fit_length(wave)
    out: list[str | None] = []
    for k in range(MAX_NOTES):
        seg = w[note_start(k):note_start(k) + NOTE_LENGTH]
        rms = float(np.sqrt(np.mean(seg * seg)))
        out.append(nearest_pitch(peak_frequency(seg)) if rms > NOTE_RMS_THRESHOLD else None)
    return tuple(out)


def classify_audio(wave: np.ndarray) -> tuple[str, ...]:
    """The pitches of the windows that hold a note, in order (any length is padded/cut to 1 s)."""
    return tuple(p for p in classify_audio_windows(wave) if p is not None)


def score_audio(wave: np.ndarray, expected_pitches: Sequence[str] | str) -> dict[str, Any]:
    """``correct`` when windows 0 … n-1 hold the n expected pitches and the others are silent;
    ``count``: whether the number of notes matches; ``predicted``: :func:`classify_audio`.
    ``expected_pitches``: pitch names or an audio caption."""
    if isinstance(expected_pitches, str):
        parsed = parse_audio_caption(expected_pitches)
        if parsed is None:
            raise ValueError(f"not an audio caption: {expected_pitches!r}")
        expected = parsed
    else:
        expected = tuple(expected_pitches)
    windows = classify_audio_windows(wave)
    predicted = tuple(p for p in windows if p is not None)
    want = expected + (None,) * (MAX_NOTES - len(expected))
    return {"correct": windows == want, "count": len(predicted) == len(expected),
            "predicted": predicted}


__all__ = [
    "audio_caption", "classify_audio", "classify_audio_windows", "classify_image",
    "image_caption", "nearest_pitch", "parse_audio_caption", "parse_image_caption",
    "peak_frequency", "score_audio", "score_caption", "score_image", "to_uint8_image",
]
