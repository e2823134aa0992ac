"""The ``latentlm demo``: train on the built-in "shapes & tones" data, generate, score, report."""

from __future__ import annotations

from latentlm_jax.demo.report import (
    AudioSample,
    CaptionSample,
    DemoResults,
    ImageSample,
    StageSummary,
    score_table_text,
    write_report,
)

__all__ = [
    "AudioSample",
    "CaptionSample",
    "DemoResults",
    "ImageSample",
    "StageSummary",
    "score_table_text",
    "write_report",
]
