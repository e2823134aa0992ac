"""The ``latentlm demo``: train on the built-in "shapes & tones" data, generate, score, report.

``pipeline`` runs the six stages (``stages``: training and encoding; ``generation``: generation
and scoring; ``markers`` / ``progress``: their bookkeeping); ``report`` writes the report from a
``results.DemoResults`` (``assets``, ``report_html``, ``report_md``, ``plots``). The settings are
the config file ``configs/demo.py``.
"""

from __future__ import annotations

from latentlm_jax.demo.report import write_report
from latentlm_jax.demo.results import (
    AudioSample,
    CaptionSample,
    DemoResults,
    ImageSample,
    StageSummary,
    score_table_text,
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
