"""The report's ``report.md``: the same sections and order as the HTML page, with the media as
files next to it (written by ``demo/assets.py``)."""

from __future__ import annotations

import re

from latentlm_jax.demo.assets import Assets
from latentlm_jax.demo.results import (
    BAD,
    OK,
    DemoResults,
    caption_modalities,
    count_text,
    duration_text,
    format_value,
    intro_text,
    pass_mark,
    score_rows,
)

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&])")


def _m(text: object) -> str:
    """Escapes Markdown (and inline-HTML) syntax in user text; newlines become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", str(text).replace("\n", " "))


def _md_mark(ok: bool) -> str:
    return OK if ok else BAD


def _md_scores(results: DemoResults) -> list[str]:
    out = ["## Scores", "", "| metric | value | n | target | |", "|---|---:|---:|---:|---|"]
    for r in score_rows(results):
        value = format_value(r.value, r.key, r.metric)
        if r.extras:
            value += " (" + ", ".join(f"{k} {format_value(v, k, r.metric)}"
                                      for k, v in r.extras.items()) + ")"
        target = "" if r.target is None else format_value(r.target, r.key, r.metric)
        out.append(f"| {_m(r.metric)} | {_m(value)} | {'' if r.n is None else r.n} | "
                   f"{_m(target)} | {pass_mark(r.passed)} |")
    return out


def _md_images(results: DemoResults, assets: Assets, cols: int = 6) -> list[str]:
    out = ["## Text \u2192 image", ""]
    if not results.images:
        return out + ["No samples."]
    held = [s.correct for s in results.images if s.held_out]
    out += [count_text([s.correct for s in results.images])
            + (f"; held-out combinations: {count_text(held)}" if held else "") + ".", "",
            "| " + " | ".join([""] * cols) + " |", "|" + "---|" * cols]
    cells = []
    for s, rel in zip(results.images, assets.image_files, strict=True):
        held_txt = " **held-out**" if s.held_out else ""
        cells.append(f"![{_m(s.caption)}]({rel})<br>{_md_mark(s.correct)} {_m(s.caption)}"
                     f"{held_txt}" + ("" if s.correct else f"<br>*saw: {_m(s.predicted)}*"))
    for i in range(0, len(cells), cols):
        row = cells[i:i + cols] + [""] * (cols - len(cells[i:i + cols]))
        out.append("| " + " | ".join(row) + " |")
    return out


def _md_audio(results: DemoResults, assets: Assets) -> list[str]:
    out = ["## Text \u2192 audio", ""]
    if not results.audio:
        return out + ["No samples."]
    out += [count_text([s.correct for s in results.audio]) + ".", "",
            "| | prompt | heard | spectrogram | clip |", "|---|---|---|---|---|"]
    for s, wav, spec in zip(results.audio, assets.audio_files, assets.audio_specs, strict=True):
        out.append(f"| {_md_mark(s.correct)} | {_m(s.caption)} | {_m(s.predicted)} | "
                   f"![spectrogram]({spec}) | [{wav}]({wav}) |")
    return out


def _md_captions(results: DemoResults, assets: Assets) -> list[str]:
    out = ["## Image / audio \u2192 text", ""]
    if not results.captions:
        return out + ["No samples."]
    for modality in caption_modalities(results):
        flags = [c.correct for c in results.captions if c.modality == modality]
        out.append(f"{_m(modality)}\u2192text: {count_text(flags)}.  ")
    out += ["", "| input | | generated | truth |", "|---|---|---|---|"]
    rows = zip(results.captions, assets.caption_inputs, assets.caption_audio, strict=True)
    for c, inp, wav in rows:
        cell = f"![input]({inp})" if inp else ""
        if wav:
            cell += f"<br>[{wav}]({wav})"
        out.append(f"| {cell} | {_md_mark(c.correct)} | {_m(c.generated)} | {_m(c.truth)} |")
    return out


def _md_training(results: DemoResults, assets: Assets) -> list[str]:
    out = ["## Training stages", "", "| stage | time | reused | final values |",
           "|---|---:|---|---|"]
    for st, last in zip(results.stages, assets.last_values, strict=True):
        vals = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
        out.append(f"| {_m(st.name)} | {duration_text(st.seconds)} | "
                   f"{'yes' if st.reused else ''} | {_m(vals)} |")
    out.append("")
    for st, rel in zip(results.stages, assets.plots, strict=True):
        out += [f"![{_m(st.name)} loss curves]({rel})" if rel else
                f"*{_m(st.name)}: no metrics to plot.*", ""]
    if results.config_summary:
        out += ["## Configuration", "", "| setting | value |", "|---|---|"]
        out += [f"| {_m(k)} | {_m(v)} |" for k, v in results.config_summary.items()]
    return out


def render_md(results: DemoResults, assets: Assets) -> str:
    """Same sections and order as the HTML page; media are files next to report.md."""
    out = ["# LatentLM demo: shapes & tones" + (" (fast mode)" if results.fast else ""), "",
           _m(intro_text(results)).replace("\\`latentlm demo\\`", "`latentlm demo`"), ""]
    for section in (_md_scores(results), _md_images(results, assets), _md_audio(results, assets),
                    _md_captions(results, assets), _md_training(results, assets)):
        out += section + [""]
    return "\n".join(out)
