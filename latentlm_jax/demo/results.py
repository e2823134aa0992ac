"""The demo's results as data (samples, stages, scores) and the plain text they read as.

:class:`DemoResults` is what ``demo/pipeline.py`` builds from ``results.json`` and the saved
samples; the score table (console and both report documents), the sample counts and the report's
introductory paragraph are computed here, so the HTML and Markdown documents say the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from latentlm_jax.train.metrics import format_duration

OK, BAD = "\u2713", "\u2717"  # ✓ ✗
# Score keys where lower is better (pass when value <= target); everything else: higher is better.
LOWER_IS_BETTER = frozenset({"loss", "mse", "mae", "nll", "ce", "fid", "error", "wer", "cer"})
FRACTION_KEYS = frozenset({"accuracy", "acc", "exact_match", "match", "rate", "fraction"})
_PRIMARY_KEYS = ("accuracy", "psnr", "value")


@dataclass
class ImageSample:
    """One generated image (text→image)."""

    caption: str  # the prompt
    image: np.ndarray  # uint8 [H, W, 3]
    correct: bool
    predicted: str  # what the scorer saw, e.g. "small blue circle top left" or "nothing"
    held_out: bool  # the caption's combination is one of the 18 held out of training


@dataclass
class AudioSample:
    """One generated clip (text→audio)."""

    caption: str
    wave: np.ndarray  # float32, 16 kHz
    correct: bool
    predicted: str


@dataclass
class CaptionSample:
    """One generated caption (image→text or audio→text) with the input it was given."""

    modality: str  # "image" | "audio"
    truth: str
    generated: str
    correct: bool
    image: np.ndarray | None = None
    wave: np.ndarray | None = None


@dataclass
class StageSummary:
    """One training stage."""

    name: str
    metrics_path: str  # metrics.jsonl: one JSON object per line with "step" and scalar keys
    curves: list[str]  # keys to plot, e.g. ["loss", "ce", "diff/image"]
    seconds: float
    reused: bool


@dataclass
class DemoResults:
    stages: list[StageSummary]
    # e.g. {"text→image": {"accuracy": 0.83, "n": 180}, "image recon PSNR": {"psnr": 24.1, "n": 64}}
    scores: dict[str, dict[str, float | int]]
    targets: dict[str, float]  # {"text→image": 0.8, ...}: pass marks shown next to scores
    images: list[ImageSample] = field(default_factory=list)
    audio: list[AudioSample] = field(default_factory=list)
    captions: list[CaptionSample] = field(default_factory=list)
    config_summary: dict[str, str] = field(default_factory=dict)
    total_seconds: float = 0.0
    fast: bool = False


# ----------------------------------------------------------------------------------------------
# Scores


@dataclass
class ScoreRow:
    metric: str
    value: float | int | None
    key: str  # which entry of the score dict is the value ("accuracy", "psnr", ...)
    n: int | None
    target: float | None
    passed: bool | None  # None when there is no target
    extras: dict[str, float | int]


def _primary_key(entry: dict[str, float | int]) -> str | None:
    keys = [k for k in entry if k != "n"]
    for k in _PRIMARY_KEYS:
        if k in keys:
            return k
    return keys[0] if keys else None


def score_rows(results: DemoResults) -> list[ScoreRow]:
    """One row per score entry: its main value, n, target and whether the target is met."""
    rows = []
    for metric, entry in results.scores.items():
        key = _primary_key(entry)
        value = entry.get(key) if key is not None else None
        n = entry.get("n")
        target = results.targets.get(metric)
        passed = None
        if target is not None and value is not None:
            v = float(value)
            if math.isnan(v):
                passed = False
            elif key is not None and key.lower() in LOWER_IS_BETTER:
                passed = v <= target
            else:
                passed = v >= target
        extras = {k: v for k, v in entry.items() if k not in ("n", key)}
        rows.append(ScoreRow(metric, value, key or "", None if n is None else int(n), target,
                             passed, extras))
    return rows


def format_value(value: float | int | None, key: str, metric: str = "") -> str:
    """Human formatting: fractions as percentages, PSNR in dB, counts as integers."""
    if value is None:
        return "\u2014"
    v = float(value)
    if math.isnan(v):
        return "nan"
    k = key.lower()
    if k in FRACTION_KEYS or k.endswith("accuracy"):
        return f"{100 * v:.1f}%"
    if "psnr" in k or "psnr" in metric.lower():
        return f"{v:.2f} dB"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{v:.4g}"


def pass_mark(passed: bool | None) -> str:
    return "" if passed is None else f"{OK} PASS" if passed else f"{BAD} FAIL"


def score_table_text(results: DemoResults) -> str:
    """The plain-text score table the console ends with."""
    header = ("metric", "value", "n", "target", "pass")
    lines = [header]
    for r in score_rows(results):
        value = format_value(r.value, r.key, r.metric)
        if r.extras:
            value += "  (" + ", ".join(f"{k} {format_value(v, k, r.metric)}"
                                      for k, v in r.extras.items()) + ")"
        lines.append((r.metric, value, "" if r.n is None else str(r.n),
                      "" if r.target is None else format_value(r.target, r.key, r.metric),
                      pass_mark(r.passed)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = (False, True, True, True, False)
    out = []
    for i, line in enumerate(lines):
        cells = [c.rjust(w) if r else c.ljust(w)
                 for c, w, r in zip(line, widths, right, strict=True)]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Text shared by the console and both documents


def duration_text(seconds: float) -> str:
    """``1h02m03s`` / ``4m05s`` / ``6s``, to the nearest second."""
    return format_duration(round(seconds))


def count_text(flags: list[bool]) -> str:
    """``k of n correct (p%)``."""
    n, k = len(flags), sum(bool(f) for f in flags)
    return f"{k} of {n} correct ({100 * k / n:.1f}%)" if n else "no samples"


def intro_text(results: DemoResults) -> str:
    """The one-paragraph explanation of what was run (plain text, shared by HTML and Markdown)."""
    names = ", ".join(st.name for st in results.stages) or "none"
    reused = sum(st.reused for st in results.stages)
    n_held = sum(s.held_out for s in results.images)
    mode = " in fast mode (a short schedule, so lower scores are expected)" if results.fast else ""
    parts = [
        f"`latentlm demo`{mode} trained {len(results.stages)} stage(s) ({names})"
        + (f", {reused} of them reused from an earlier run" if reused else "")
        + " on the built-in procedural \u201cshapes & tones\u201d data: 32\u00d732 images of one "
        "coloured shape and one-second clips of one to three notes, each paired with a caption "
        "that fully describes it.",
        "Samples were then generated for the test split with the trained LatentLM and scored "
        "automatically: generated images are read back into colour, shape, size and position from "
        "their pixels, generated clips into the pitch of each note window from its spectrum, and "
        "generated captions must equal the true caption exactly.",
        "18 of the 180 caption combinations were held out of training, so text\u2192image on those "
        + (f"({n_held} shown below) " if n_held else "") + "measures compositional generalisation.",
        f"Total wall time {duration_text(results.total_seconds)}.",
    ]
    return " ".join(parts)


def caption_modalities(results: DemoResults) -> list[str]:
    """The modalities of the captioning samples, in first-seen order."""
    return list(dict.fromkeys(c.modality for c in results.captions))
