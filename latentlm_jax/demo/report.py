"""The demo's report: ``report/index.html`` (self-contained), ``report/report.md`` and PNG plots.

The HTML embeds every image, plot and audio clip as a base64 data URI, with inline CSS and no
scripts, so the single file can be opened or mailed anywhere without network access. Generated
images are embedded at their native 32×32 resolution and enlarged ×4 on screen with nearest
neighbour (CSS ``image-rendering: pixelated``), which keeps ~200 of them around 100 KB; the files
saved for report.md are enlarged ×4 in the pixels themselves, since Markdown viewers apply no CSS.
Audio is embedded as 16 kHz 16-bit PCM WAV (about 43 KB of base64 per second); past
``max_audio_players`` clips the page shows the spectrogram and links the WAV file instead, to keep
the page within a few MB.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import time
import wave as wave_lib
from dataclasses import dataclass, field

import numpy as np

from latentlm_jax.demo.plots import plot_stage, read_metrics, spectrogram_rgb

SAMPLE_RATE = 16000
MD_SCALE = 4  # pixel enlargement of the image files saved for report.md
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


def _mark(passed: bool | None) -> str:
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
                      _mark(r.passed)))
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
# Media encoding


def _as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float64))
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(a.round(), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def _png_bytes(img: np.ndarray, scale: int = 1) -> bytes:
    from PIL import Image

    a = _as_rgb_uint8(img)
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def wav_bytes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit PCM WAV; samples clipped to [-1, 1], NaN read as silence."""
    x = np.clip(np.nan_to_num(np.asarray(wave, np.float64).reshape(-1)), -1.0, 1.0)
    pcm = np.round(x * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave_lib.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _display_scale(img: np.ndarray, target: int = 128) -> int:
    h, w = np.asarray(img).shape[:2]
    return max(1, target // max(h, w, 1))


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "stage"


def _duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _count(flags: list[bool]) -> str:
    n, k = len(flags), sum(bool(f) for f in flags)
    return f"{k} of {n} correct ({100 * k / n:.1f}%)" if n else "no samples"


# ----------------------------------------------------------------------------------------------
# Assets shared by both documents


@dataclass
class _Assets:
    """Files written under report/ (relative paths) and what the HTML embeds."""

    plots: list[str | None]  # per stage, relative path of its loss-curve PNG
    last_values: list[dict[str, float]]  # per stage, final value of each plotted curve
    image_files: list[str]
    audio_files: list[str]
    audio_specs: list[str]
    caption_inputs: list[str | None]  # image thumbnail or spectrogram per caption sample
    caption_audio: list[str | None]


_OWNED_PREFIXES = ("t2i_", "i2t_", "a2t_", "t2a_", "spec_", "loss_")


def _clean(out_dir: str) -> None:
    """Removes files an earlier report wrote, so a smaller rerun leaves no stale samples behind."""
    for sub in (out_dir, os.path.join(out_dir, "images"), os.path.join(out_dir, "audio")):
        if not os.path.isdir(sub):
            continue
        for name in os.listdir(sub):
            if name.startswith(_OWNED_PREFIXES) and name.endswith((".png", ".wav")):
                os.remove(os.path.join(sub, name))


def _write_assets(results: DemoResults, out_dir: str) -> _Assets:
    _clean(out_dir)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    plots, last_values = [], []
    for i, st in enumerate(results.stages):
        metrics = read_metrics(st.metrics_path)
        rel = f"loss_{i:02d}_{_slug(st.name)}.png"
        written = plot_stage(st.name, metrics, st.curves, os.path.join(out_dir, rel))
        plots.append(rel if written else None)
        last_values.append({k: float(metrics[k][1][-1]) for k in st.curves if k in metrics})

    def spec(wave: np.ndarray, rel: str) -> str:
        _write(os.path.join(out_dir, rel), _png_bytes(spectrogram_rgb(wave, SAMPLE_RATE), 2))
        return rel

    image_files = []
    for i, s in enumerate(results.images):
        rel = f"images/t2i_{i:03d}.png"
        _write(os.path.join(out_dir, rel), _png_bytes(s.image, MD_SCALE))
        image_files.append(rel)
    audio_files, audio_specs = [], []
    for i, s in enumerate(results.audio):
        rel = f"audio/t2a_{i:03d}.wav"
        _write(os.path.join(out_dir, rel), wav_bytes(s.wave))
        audio_files.append(rel)
        audio_specs.append(spec(s.wave, f"images/spec_t2a_{i:03d}.png"))
    caption_inputs: list[str | None] = []
    caption_audio: list[str | None] = []
    for i, c in enumerate(results.captions):
        inp = wav = None
        if c.image is not None:
            inp = f"images/i2t_{i:03d}.png"
            _write(os.path.join(out_dir, inp), _png_bytes(c.image, MD_SCALE // 2))
        if c.wave is not None:
            wav = f"audio/a2t_{i:03d}.wav"
            _write(os.path.join(out_dir, wav), wav_bytes(c.wave))
            if inp is None:
                inp = spec(c.wave, f"images/spec_a2t_{i:03d}.png")
        caption_inputs.append(inp)
        caption_audio.append(wav)
    return _Assets(plots, last_values, image_files, audio_files, audio_specs, caption_inputs,
                   caption_audio)


def _intro(results: DemoResults) -> str:
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
        f"Total wall time {_duration(results.total_seconds)}.",
    ]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0;background:#f6f7f9;color:#1f2328;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:28px} h2{margin:32px 0 10px;font-size:21px;
 border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#59636e;margin:0 0 14px} .muted{color:#59636e}
nav a{margin-right:14px;color:#0969da;text-decoration:none}
p.intro{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de}
th,td{padding:5px 12px;border-bottom:1px solid #e4e8ec;text-align:left;vertical-align:middle}
th{background:#eef1f4;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:600;white-space:nowrap} .verdict.pass{color:#1a7f37}
.verdict.fail{color:#cf222e}
.badge{display:inline-block;font-size:11px;border-radius:10px;padding:0 7px;margin-left:4px;
 background:#ddf4ff;color:#0550ae;border:1px solid #54aeff}
.badge.held{background:#fff8c5;color:#7d4e00;border-color:#d4a72c}
.badge.fast{background:#ffebe9;color:#a40e26;border-color:#ff8182}
.summary{font-weight:600;margin:4px 0 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.card{background:#fff;border:3px solid #999;border-radius:8px;padding:6px;text-align:center;
 font-size:12px} .card.ok{border-color:#2da44e} .card.bad{border-color:#cf222e}
.card img.px{width:128px;height:128px}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid #e4e8ec}
.mark{font-weight:700;font-size:14px;margin-right:3px} .mark.ok{color:#1a7f37}
.mark.bad{color:#cf222e} .saw{color:#59636e;font-style:italic}
.agrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:10px}
.acard{text-align:left} .acard img.spec{width:100%;height:70px;image-rendering:pixelated}
audio{width:100%;height:32px;margin-top:4px}
img.plot{max-width:100%;background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:6px 0}
td.thumb img.px{width:48px;height:48px} td.truth{color:#59636e}
.cols table{font-size:13px} .cols td,.cols th{padding:4px 8px}
.cols{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
td.thumb img.spec{width:170px;height:44px;
 image-rendering:pixelated} td.thumb audio{width:170px}
code{background:#eef1f4;padding:1px 4px;border-radius:4px}
footer{margin:36px 0 12px;color:#59636e;font-size:12px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img_tag(img: np.ndarray, alt: str, cls: str = "px") -> str:
    return (f'<img class="{cls}" alt="{_e(alt)}" '
            f'src="{_data_uri("image/png", _png_bytes(img))}">')


def _audio_tag(wave: np.ndarray) -> str:
    uri = _data_uri("audio/wav", wav_bytes(wave))
    return f'<audio controls preload="metadata" src="{uri}"></audio>'


def _mark_html(ok: bool) -> str:
    return f'<span class="mark ok">{OK}</span>' if ok else f'<span class="mark bad">{BAD}</span>'


def _html_scores(results: DemoResults) -> str:
    rows = score_rows(results)
    if not rows:
        return '<p class="muted">No scores.</p>'
    out = ['<table><tr><th>metric</th><th>value</th><th>n</th><th>target</th><th></th></tr>']
    for r in rows:
        extra = ""
        if r.extras:
            extra = '<br><span class="muted">' + _e(", ".join(
                f"{k} {format_value(v, k, r.metric)}" for k, v in r.extras.items())) + "</span>"
        verdict = ("" if r.passed is None else
                   f'<span class="verdict {"pass" if r.passed else "fail"}">{_e(_mark(r.passed))}'
                   "</span>")
        target = "" if r.target is None else format_value(r.target, r.key, r.metric)
        out.append(f"<tr><td>{_e(r.metric)}</td><td class=num>"
                   f"{_e(format_value(r.value, r.key, r.metric))}{extra}</td>"
                   f"<td class=num>{'' if r.n is None else r.n}</td><td class=num>{_e(target)}</td>"
                   f"<td>{verdict}</td></tr>")
    out.append("</table>")
    judged = [r.passed for r in rows if r.passed is not None]
    if judged:
        out.append(f'<p class="summary">{sum(judged)} of {len(judged)} targets met.</p>')
    return "\n".join(out)


def _html_config(results: DemoResults) -> str:
    if not results.config_summary:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                   for k, v in results.config_summary.items())
    return f"<h2 id=config>Configuration</h2><table>{rows}</table>"


def _html_training(results: DemoResults, assets: _Assets, out_dir: str) -> str:
    out = ['<h2 id=training>Training stages</h2>']
    if not results.stages:
        return out[0] + '<p class="muted">No stages.</p>'
    out.append("<table><tr><th>stage</th><th>time</th><th>final values</th></tr>")
    for st, last in zip(results.stages, assets.last_values, strict=True):
        badge = ' <span class="badge">reused</span>' if st.reused else ""
        vals = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
        out.append(f"<tr><td>{_e(st.name)}{badge}</td><td class=num>{_e(_duration(st.seconds))}"
                   f"</td><td>{_e(vals)}</td></tr>")
    out.append("</table>")
    for st, rel in zip(results.stages, assets.plots, strict=True):
        if rel is None:
            out.append(f'<p class="muted">{_e(st.name)}: no metrics to plot.</p>')
            continue
        with open(os.path.join(out_dir, rel), "rb") as f:
            uri = _data_uri("image/png", f.read())
        out.append(f'<img class="plot" alt="{_e(st.name)} loss curves" src="{uri}">')
    return "\n".join(out)


def _html_images(results: DemoResults) -> str:
    out = ['<h2 id=t2i>Text \u2192 image</h2>']
    if not results.images:
        return out[0] + '<p class="muted">No samples.</p>'
    held = [s.correct for s in results.images if s.held_out]
    line = f"{_count([s.correct for s in results.images])}"
    if held:
        line += f"; held-out combinations: {_count(held)}"
    out.append(f'<p class="summary">{_e(line)}</p>')
    out.append('<p class="muted">Border green when the scorer read back all four attributes of the '
               'prompt, red otherwise (with \u201csaw\u201d: what it read instead). Shown \u00d74 '
               'with nearest neighbour.</p><div class="grid">')
    for s in results.images:
        held_badge = '<span class="badge held">held-out</span>' if s.held_out else ""
        saw = "" if s.correct else f'<div class="saw">saw: {_e(s.predicted)}</div>'
        out.append(f'<div class="card {"ok" if s.correct else "bad"}">'
                   f'{_img_tag(s.image, s.caption)}<div>{_mark_html(s.correct)}{_e(s.caption)}'
                   f'{held_badge}</div>{saw}</div>')
    out.append("</div>")
    return "\n".join(out)


def _html_audio(results: DemoResults, assets: _Assets, embed: int) -> str:
    out = ['<h2 id=t2a>Text \u2192 audio</h2>']
    if not results.audio:
        return out[0] + '<p class="muted">No samples.</p>'
    out.append(f'<p class="summary">{_e(_count([s.correct for s in results.audio]))}</p>')
    out.append('<p class="muted">Spectrogram 0\u20132 kHz over the one-second clip.</p>')
    if embed < len(results.audio):
        out.append(f'<p class="muted">The first {embed} clips are embedded; the rest are linked '
                   'as WAV files next to this page.</p>')
    out.append('<div class="agrid">')
    for i, s in enumerate(results.audio):
        heard = "" if s.correct else f'<div class="saw">heard: {_e(s.predicted)}</div>'
        player = (_audio_tag(s.wave) if i < embed else
                  f'<a href="{_e(assets.audio_files[i])}">{_e(assets.audio_files[i])}</a>')
        out.append(f'<div class="card acard {"ok" if s.correct else "bad"}">'
                   f'{_img_tag(spectrogram_rgb(s.wave, SAMPLE_RATE), s.caption, "spec")}'
                   f'{player}<div>{_mark_html(s.correct)}{_e(s.caption)}</div>'
                   f'{heard}</div>')
    out.append("</div>")
    return "\n".join(out)


def _modalities(results: DemoResults) -> list[str]:
    return list(dict.fromkeys(c.modality for c in results.captions))  # first-seen order


def _html_captions(results: DemoResults, assets: _Assets, embed: int) -> str:
    out = ['<h2 id=captions>Image / audio \u2192 text</h2>']
    if not results.captions:
        return out[0] + '<p class="muted">No samples.</p>'
    out.append('<p class="muted">A caption counts only when it equals the true one exactly.</p>'
               '<div class="cols">')
    n_audio = 0
    for modality in _modalities(results):
        items = [(i, c) for i, c in enumerate(results.captions) if c.modality == modality]
        flags = [c.correct for _, c in items]
        out.append(f'<div><p class="summary">{_e(modality)}\u2192text: {_e(_count(flags))}</p>'
                   "<table><tr><th>input</th><th>generated</th><th>truth</th></tr>")
        for i, c in items:
            cell = ""
            if c.image is not None:
                cell = _img_tag(c.image, c.truth)
            elif c.wave is not None:
                cell = _img_tag(spectrogram_rgb(c.wave, SAMPLE_RATE), c.truth, "spec")
            if c.wave is not None:
                if n_audio < embed:
                    cell += "<br>" + _audio_tag(c.wave)
                else:
                    rel = assets.caption_audio[i]
                    cell += f'<br><a href="{_e(rel)}">{_e(rel)}</a>'
                n_audio += 1
            out.append(f'<tr class="{"ok" if c.correct else "bad"}"><td class="thumb">{cell}</td>'
                       f"<td>{_mark_html(c.correct)}{_e(c.generated)}</td>"
                       f'<td class="truth">{_e(c.truth)}</td></tr>')
        out.append("</table></div>")
    out.append("</div>")
    return "\n".join(out)


def _audio_budget(results: DemoResults, max_players: int) -> tuple[int, int]:
    """How many text→audio clips and audio→text inputs get an embedded player."""
    n_t2a = len(results.audio)
    n_a2t = sum(c.wave is not None for c in results.captions)
    t2a = min(n_t2a, max(max_players // 2, max_players - n_a2t))
    return t2a, min(n_a2t, max_players - t2a)


def _render_html(results: DemoResults, assets: _Assets, out_dir: str, max_players: int) -> str:
    emb_t2a, emb_a2t = _audio_budget(results, max_players)
    fast = ' <span class="badge fast">fast mode</span>' if results.fast else ""
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("scores", "Scores"), ("t2i", "Text\u2192image"), ("t2a", "Text\u2192audio"),
        ("captions", "Captions"), ("training", "Training"), ("config", "Configuration"))
        if a != "config" or results.config_summary)
    intro = _e(_intro(results)).replace("`latentlm demo`", "<code>latentlm demo</code>")
    body = [
        f"<h1>LatentLM demo: shapes &amp; tones{fast}</h1>",
        f'<p class="sub">{_e(time.strftime("%Y-%m-%d %H:%M"))} \u00b7 '
        f"{_e(_duration(results.total_seconds))} total</p>",
        f"<nav>{nav}</nav>",
        f'<p class="intro">{intro}</p>',
        '<h2 id=scores>Scores</h2>',
        _html_scores(results),
        _html_images(results),
        _html_audio(results, assets, emb_t2a),
        _html_captions(results, assets, emb_a2t),
        _html_training(results, assets, out_dir),
        _html_config(results),
        "<footer>Written by latentlm_jax.demo.report; everything on this page is embedded."
        "</footer>",
    ]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>LatentLM demo report</title><style>{_CSS}</style></head>"
            "<body><main>\n" + "\n".join(b for b in body if b) + "\n</main></body></html>\n")


# ----------------------------------------------------------------------------------------------
# Markdown

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
                   f"{_m(target)} | {_mark(r.passed)} |")
    return out


def _md_images(results: DemoResults, assets: _Assets, cols: int = 6) -> list[str]:
    out = ["## Text \u2192 image", ""]
    if not results.images:
        return out + ["No samples."]
    held = [s.correct for s in results.images if s.held_out]
    out += [_count([s.correct for s in results.images])
            + (f"; held-out combinations: {_count(held)}" if held else "") + ".", "",
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


def _md_audio(results: DemoResults, assets: _Assets) -> list[str]:
    out = ["## Text \u2192 audio", ""]
    if not results.audio:
        return out + ["No samples."]
    out += [_count([s.correct for s in results.audio]) + ".", "",
            "| | prompt | heard | spectrogram | clip |", "|---|---|---|---|---|"]
    for s, wav, spec in zip(results.audio, assets.audio_files, assets.audio_specs, strict=True):
        out.append(f"| {_md_mark(s.correct)} | {_m(s.caption)} | {_m(s.predicted)} | "
                   f"![spectrogram]({spec}) | [{wav}]({wav}) |")
    return out


def _md_captions(results: DemoResults, assets: _Assets) -> list[str]:
    out = ["## Image / audio \u2192 text", ""]
    if not results.captions:
        return out + ["No samples."]
    for modality in _modalities(results):
        flags = [c.correct for c in results.captions if c.modality == modality]
        out.append(f"{_m(modality)}\u2192text: {_count(flags)}.  ")
    out += ["", "| input | | generated | truth |", "|---|---|---|---|"]
    rows = zip(results.captions, assets.caption_inputs, assets.caption_audio, strict=True)
    for c, inp, wav in rows:
        cell = f"![input]({inp})" if inp else ""
        if wav:
            cell += f"<br>[{wav}]({wav})"
        out.append(f"| {cell} | {_md_mark(c.correct)} | {_m(c.generated)} | {_m(c.truth)} |")
    return out


def _md_training(results: DemoResults, assets: _Assets) -> list[str]:
    out = ["## Training stages", "", "| stage | time | reused | final values |",
           "|---|---:|---|---|"]
    for st, last in zip(results.stages, assets.last_values, strict=True):
        vals = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
        out.append(f"| {_m(st.name)} | {_duration(st.seconds)} | {'yes' if st.reused else ''} | "
                   f"{_m(vals)} |")
    out.append("")
    for st, rel in zip(results.stages, assets.plots, strict=True):
        out += [f"![{_m(st.name)} loss curves]({rel})" if rel else
                f"*{_m(st.name)}: no metrics to plot.*", ""]
    if results.config_summary:
        out += ["## Configuration", "", "| setting | value |", "|---|---|"]
        out += [f"| {_m(k)} | {_m(v)} |" for k, v in results.config_summary.items()]
    return out


def _render_md(results: DemoResults, assets: _Assets) -> str:
    """Same sections and order as the HTML page; media are files next to report.md."""
    out = ["# LatentLM demo: shapes & tones" + (" (fast mode)" if results.fast else ""), "",
           _m(_intro(results)).replace("\\`latentlm demo\\`", "`latentlm demo`"), ""]
    for section in (_md_scores(results), _md_images(results, assets), _md_audio(results, assets),
                    _md_captions(results, assets), _md_training(results, assets)):
        out += section + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------


def write_report(results: DemoResults, out_dir: str, *, max_audio_players: int = 48
                 ) -> dict[str, str]:
    """Writes index.html, report.md, loss-curve PNGs and sample files under ``out_dir``.

    Returns the paths written: "html", "markdown" and "plot:<stage name>" per plotted stage.
    """
    os.makedirs(out_dir, exist_ok=True)
    assets = _write_assets(results, out_dir)
    paths = {"html": os.path.join(out_dir, "index.html"),
             "markdown": os.path.join(out_dir, "report.md")}
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(_render_html(results, assets, out_dir, max_audio_players))
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(_render_md(results, assets))
    for st, rel in zip(results.stages, assets.plots, strict=True):
        if rel:
            key = f"plot:{st.name}"
            paths[key if key not in paths else f"{key} ({rel})"] = os.path.join(out_dir, rel)
    return paths
