"""The built-in *shapes & tones* dataset: procedural paired captions, images and audio.

Every example is a pure function of ``(split, index, seed)``: a fresh NumPy generator is derived
from ``SeedSequence([seed, split_id, index])`` and used for a fixed sequence of draws, so access
is random, deterministic and unlimited. The full specification is ``docs/dataset.md``.

Geometry convention: pixel ``(row y, column x)`` covers the unit square ``[x, x+1) × [y, y+1)``.
A shape's centre ``(cx, cy)`` is a pixel *corner*, so a bounding box of ``s`` (even) pixels spans
columns ``cx - s/2 … cx + s/2 - 1`` and is symmetric about ``cx``.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "purple": (150, 60, 190),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 8, "large": 16}  # bounding-box side in pixels
POSITIONS: dict[str, tuple[int, int]] = {  # centre (x, y)
    "top left": (9, 9),
    "top right": (23, 9),
    "bottom left": (9, 23),
    "bottom right": (23, 23),
    "center": (16, 16),
}
PITCH_NAMES: tuple[str, ...] = ("C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5")
_SEMITONES_FROM_A4 = (-9, -7, -5, -4, -2, 0, 2, 3)
PITCHES: dict[str, float] = {  # equal temperament, A4 = 440 Hz
    name: 440.0 * 2.0 ** (st / 12.0)
    for name, st in zip(PITCH_NAMES, _SEMITONES_FROM_A4, strict=True)
}

SAMPLE_RATE = 16000
IMAGE_SIZE = 32
AUDIO_SAMPLES = 16000
BACKGROUND = 255
MAX_JITTER = 1  # the centre moves by up to ±1 px on each axis

MAX_NOTES = 3
NOTE_START_S = 0.05
NOTE_SPACING_S = 0.3
NOTE_DURATION_S = 0.25
FADE_S = 0.01
NOTE_PEAK = 0.5
SECOND_HARMONIC = 0.3
NOTE_START = round(NOTE_START_S * SAMPLE_RATE)  # 800
NOTE_SPACING = round(NOTE_SPACING_S * SAMPLE_RATE)  # 4800
NOTE_LENGTH = round(NOTE_DURATION_S * SAMPLE_RATE)  # 4000
FADE_LENGTH = round(FADE_S * SAMPLE_RATE)  # 160

SPLITS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}  # name -> split id (seeding)
SPLIT_SIZES: dict[str, int] = {"train": 1_000_000, "validation": 10_000, "test": 10_000}

Combination = tuple[str, str, str, str]  # (size, color, shape, position)

# Held out of the train (and validation) split. Rule, for k = 0 … 17:
#   color = COLORS[k // 3], shape = SHAPES[k % 3], size = SIZES[(k // 3 + k % 3) % 2],
#   position = POSITIONS[k % 5]
# so every (color, shape) pair is held out exactly once (in one size and position), each color
# 3×, each shape 6×, each size 9×, each position 3 or 4×; every attribute value, and every pair of
# values, still appears in training. tests/test_shapes_tones.py checks this list against the rule.
HELD_OUT_COMBINATIONS: tuple[Combination, ...] = (
    ("small", "red", "circle", "top left"),
    ("large", "red", "square", "top right"),
    ("small", "red", "triangle", "bottom left"),
    ("large", "green", "circle", "bottom right"),
    ("small", "green", "square", "center"),
    ("large", "green", "triangle", "top left"),
    ("small", "blue", "circle", "top right"),
    ("large", "blue", "square", "bottom left"),
    ("small", "blue", "triangle", "bottom right"),
    ("large", "yellow", "circle", "center"),
    ("small", "yellow", "square", "top left"),
    ("large", "yellow", "triangle", "top right"),
    ("small", "purple", "circle", "bottom left"),
    ("large", "purple", "square", "bottom right"),
    ("small", "purple", "triangle", "center"),
    ("large", "orange", "circle", "top left"),
    ("small", "orange", "square", "top right"),
    ("large", "orange", "triangle", "bottom left"),
)
_HELD_OUT_SET = frozenset(HELD_OUT_COMBINATIONS)


def all_combinations() -> tuple[Combination, ...]:
    """The 180 (size, color, shape, position) combinations, in product order."""
    return tuple(itertools.product(SIZES, COLORS, SHAPES, POSITIONS))


def combination_of(attrs: Mapping[str, str]) -> Combination:
    return (attrs["size"], attrs["color"], attrs["shape"], attrs["position"])


def is_held_out(attrs: Mapping[str, str] | Combination) -> bool:
    """Whether an attrs dict or a (size, color, shape, position) tuple is held out of training."""
    combo = combination_of(attrs) if isinstance(attrs, Mapping) else tuple(attrs)
    return combo in _HELD_OUT_SET


_ALL_COMBINATIONS = all_combinations()
_TRAIN_COMBINATIONS = tuple(c for c in _ALL_COMBINATIONS if c not in _HELD_OUT_SET)
_SPLIT_COMBINATIONS = {"train": _TRAIN_COMBINATIONS, "validation": _TRAIN_COMBINATIONS,
                       "test": _ALL_COMBINATIONS}

# Class labels (class-conditional generation, docs/class_conditional.md): the class of an image is
# the index of its (size, color, shape, position) in all_combinations(): 180 classes, product
# order, so class k = ((size·6 + color)·3 + shape)·5 + position. Examples carry it as "label".
NUM_CLASSES = len(_ALL_COMBINATIONS)
_CLASS_IDS = {combo: k for k, combo in enumerate(_ALL_COMBINATIONS)}


def class_id(attrs: Mapping[str, str] | Combination) -> int:
    """The class (0 … 179) of an attrs dict or a (size, color, shape, position) tuple."""
    combo = combination_of(attrs) if isinstance(attrs, Mapping) else tuple(attrs)
    return _CLASS_IDS[combo]


def class_attributes(k: int) -> dict[str, str]:
    """The image attributes of class ``k`` (inverse of :func:`class_id`)."""
    if not 0 <= int(k) < NUM_CLASSES:
        raise ValueError(f"class {k} not in [0, {NUM_CLASSES})")
    size, color, shape, position = _ALL_COMBINATIONS[int(k)]
    return {"color": color, "shape": shape, "size": size, "position": position}


# ------------------------------------------------------------------------------------- images

@functools.cache
def shape_mask(shape: str, size: int) -> np.ndarray:
    """bool[size, size]: the filled pixels of ``shape`` in its bounding box.

    A pixel is filled when its centre lies inside the shape: circle of diameter ``size``, square,
    or isosceles triangle with apex at the top middle and the full bottom edge as base. The two
    top-middle pixels of the triangle are always filled so its bounding box is ``size`` high.
    """
    c = (np.arange(size) + 0.5) - size / 2.0  # pixel-centre offsets from the box centre
    dx, dy = np.meshgrid(c, c)  # [row, col]
    if shape == "circle":
        mask = dx * dx + dy * dy <= (size / 2.0) ** 2
    elif shape == "square":
        mask = np.ones((size, size), bool)
    elif shape == "triangle":
        depth = dy + size / 2.0  # distance of the pixel centre below the apex
        mask = np.abs(dx) <= depth / 2.0
        mask[0, size // 2 - 1:size // 2 + 1] = True
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask.setflags(write=False)
    return mask


def _check(name: str, value: str, allowed: Sequence[str] | Mapping[str, Any]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}")


def render_image(color: str, shape: str, size: str, position: str,
                 jitter_xy: tuple[int, int] = (0, 0)) -> np.ndarray:
    """uint8[32, 32, 3]: one filled shape with hard edges on a white background."""
    _check("color", color, COLORS)
    _check("shape", shape, SHAPES)
    _check("size", size, SIZES)
    _check("position", position, POSITIONS)
    jx, jy = (int(j) for j in jitter_xy)
    if abs(jx) > MAX_JITTER or abs(jy) > MAX_JITTER:
        raise ValueError(f"jitter_xy {jitter_xy} exceeds ±{MAX_JITTER} px")
    s = SIZES[size]
    cx, cy = POSITIONS[position]
    x0, y0 = cx + jx - s // 2, cy + jy - s // 2
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, np.uint8)
    img[y0:y0 + s, x0:x0 + s][shape_mask(shape, s)] = COLORS[color]
    return img


def image_caption(color: str, shape: str, size: str, position: str) -> str:
    """``a {size} {color} {shape} in the {position}``; call as ``image_caption(**attrs)``."""
    return f"a {size} {color} {shape} in the {position}"


# -------------------------------------------------------------------------------------- audio

@functools.cache
def note_waveform(pitch: str) -> np.ndarray:
    """float32[NOTE_LENGTH]: one note — fundamental + 0.3× second harmonic, 10 ms linear fades,
    scaled so its peak absolute amplitude is exactly 0.5."""
    _check("pitch", pitch, PITCHES)
    t = np.arange(NOTE_LENGTH, dtype=np.float64) / SAMPLE_RATE
    w = 2.0 * np.pi * PITCHES[pitch] * t
    wave = np.sin(w) + SECOND_HARMONIC * np.sin(2.0 * w)
    ramp = np.arange(FADE_LENGTH, dtype=np.float64) / FADE_LENGTH
    wave[:FADE_LENGTH] *= ramp
    wave[-FADE_LENGTH:] *= ramp[::-1]
    wave = (wave * (NOTE_PEAK / np.max(np.abs(wave)))).astype(np.float32)
    wave.setflags(write=False)
    return wave


def note_start(k: int) -> int:
    """First sample of note ``k`` (0.05 + 0.3·k s)."""
    return NOTE_START + k * NOTE_SPACING


def render_audio(pitches: Sequence[str]) -> np.ndarray:
    """float32[16000]: 1–3 notes at 0.05 + 0.3·k s, 0.25 s each, silence elsewhere; peak 0.5."""
    if not 1 <= len(pitches) <= MAX_NOTES:
        raise ValueError(f"expected 1 to {MAX_NOTES} pitches, got {len(pitches)}")
    wave = np.zeros(AUDIO_SAMPLES, np.float32)
    for k, p in enumerate(pitches):
        start = note_start(k)
        wave[start:start + NOTE_LENGTH] = note_waveform(p)
    return wave


def audio_caption(pitches: Sequence[str]) -> str:
    """``notes {p1} {p2} {p3}`` — e.g. ``notes C4 E4 G4``."""
    return "notes " + " ".join(pitches)


# ------------------------------------------------------------------------------------ dataset

class ShapesTones:
    """Random-access *shapes & tones* examples of one split.

    Splits: ``train`` (1,000,000 examples) and ``validation`` (10,000) draw image attributes
    uniformly from the 162 combinations not in :data:`HELD_OUT_COMBINATIONS`; ``test`` (10,000)
    draws uniformly from all 180. Each example also draws a jitter in {-1, 0, 1}² and 1–3 notes
    with pitches uniform over the eight (repeats allowed).
    """

    def __init__(self, split: str = "train", seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.split = split
        self.seed = int(seed)
        self._split_id = SPLITS[split]
        self._len = SPLIT_SIZES[split]
        self._combos = _SPLIT_COMBINATIONS[split]

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"ShapesTones(split={self.split!r}, seed={self.seed}, {self._len} examples)"

    def _rng(self, index: int) -> np.random.Generator:
        i = int(index)
        if not 0 <= i < self._len:
            raise IndexError(f"index {index} out of range for {self._len} examples")
        return np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([self.seed, self._split_id, i])))

    def attributes(self, index: int) -> dict[str, str]:
        """The image attributes of example ``index``, without rendering anything."""
        return self._draw_attrs(self._rng(index))

    def _draw_attrs(self, rng: np.random.Generator) -> dict[str, str]:
        size, color, shape, position = self._combos[int(rng.integers(len(self._combos)))]
        return {"color": color, "shape": shape, "size": size, "position": position}

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self._rng(index)
        # Fixed order and number of draws: combination, jitter (2), note count, 3 pitches.
        attrs = self._draw_attrs(rng)
        jitter = rng.integers(-MAX_JITTER, MAX_JITTER + 1, size=2)
        n_notes = int(rng.integers(1, MAX_NOTES + 1))
        pitches = tuple(PITCH_NAMES[j] for j in rng.integers(len(PITCH_NAMES), size=MAX_NOTES))
        pitches = pitches[:n_notes]
        return {
            "image": render_image(**attrs, jitter_xy=(int(jitter[0]), int(jitter[1]))),
            "image_caption": image_caption(**attrs),
            "image_attrs": attrs,
            "label": class_id(attrs),
            "audio": render_audio(pitches),
            "audio_caption": audio_caption(pitches),
            "audio_pitches": pitches,
        }

    def held_out_indices(self, n: int, start: int = 0) -> list[int]:
        """The first ``n`` indices ≥ ``start`` whose image combination is held out (test split
        only: about 1 in 10 of its examples)."""
        if self.split != "test":
            raise ValueError(f"the {self.split!r} split has no held-out combinations; use 'test'")
        out: list[int] = []
        i = start
        while len(out) < n:
            if i >= self._len:
                raise ValueError(f"fewer than {n} held-out examples from index {start}")
            if is_held_out(self.attributes(i)):
                out.append(i)
            i += 1
        return out


def held_out_test_examples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``n`` test-split examples whose image combination is held out of training."""
    ds = ShapesTones("test", seed)
    return [ds[i] for i in ds.held_out_indices(n)]


def benchmark_generation(n: int = 2000, split: str = "train", seed: int = 0) -> float:
    """Examples/s of ``ShapesTones[i]`` (image + audio + captions) on the calling thread."""
    ds = ShapesTones(split, seed)
    ds[0]  # warm the mask and note caches
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t0)
