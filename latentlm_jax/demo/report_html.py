"""The report's ``index.html``: one self-contained page (inline CSS, no scripts).

Every image, plot and audio clip is embedded as a base64 data URI, so the single file can be
opened or mailed anywhere without network access. Generated images are embedded at their native
32×32 resolution and enlarged ×4 on screen with nearest neighbour (CSS ``image-rendering:
pixelated``), which keeps ~200 of them around 100 KB. Audio is embedded as 16 kHz 16-bit PCM WAV
(about 43 KB of base64 per second); past ``max_audio_players`` clips the page shows the
spectrogram and links the WAV file instead, to keep the page within a few MB.
"""

from __future__ import annotations

import html
import os
import time

import numpy as np

from latentlm_jax import paths
from latentlm_jax.demo.assets import SAMPLE_RATE, Assets, data_uri, png_bytes, wav_bytes
from latentlm_jax.demo.plots import spectrogram_rgb
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
            f'src="{data_uri("image/png", png_bytes(img))}">')


def _audio_tag(wave: np.ndarray) -> str:
    uri = data_uri("audio/wav", wav_bytes(wave))
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
                   f'<span class="verdict {"pass" if r.passed else "fail"}">'
                   f"{_e(pass_mark(r.passed))}</span>")
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


def _html_training(results: DemoResults, assets: Assets, out_dir: str) -> str:
    out = ['<h2 id=training>Training stages</h2>']
    if not results.stages:
        return out[0] + '<p class="muted">No stages.</p>'
    out.append("<table><tr><th>stage</th><th>time</th><th>final values</th></tr>")
    for st, last in zip(results.stages, assets.last_values, strict=True):
        badge = ' <span class="badge">reused</span>' if st.reused else ""
        vals = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
        out.append(f"<tr><td>{_e(st.name)}{badge}</td><td class=num>{_e(duration_text(st.seconds))}"
                   f"</td><td>{_e(vals)}</td></tr>")
    out.append("</table>")
    for st, rel in zip(results.stages, assets.plots, strict=True):
        if rel is None:
            out.append(f'<p class="muted">{_e(st.name)}: no metrics to plot.</p>')
            continue
        uri = data_uri("image/png", paths.read_bytes(os.path.join(out_dir, rel)))
        out.append(f'<img class="plot" alt="{_e(st.name)} loss curves" src="{uri}">')
    return "\n".join(out)


def _html_images(results: DemoResults) -> str:
    out = ['<h2 id=t2i>Text \u2192 image</h2>']
    if not results.images:
        return out[0] + '<p class="muted">No samples.</p>'
    held = [s.correct for s in results.images if s.held_out]
    line = f"{count_text([s.correct for s in results.images])}"
    if held:
        line += f"; held-out combinations: {count_text(held)}"
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


def _html_audio(results: DemoResults, assets: Assets, embed: int) -> str:
    out = ['<h2 id=t2a>Text \u2192 audio</h2>']
    if not results.audio:
        return out[0] + '<p class="muted">No samples.</p>'
    out.append(f'<p class="summary">{_e(count_text([s.correct for s in results.audio]))}</p>')
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


def _html_captions(results: DemoResults, assets: Assets, embed: int) -> str:
    out = ['<h2 id=captions>Image / audio \u2192 text</h2>']
    if not results.captions:
        return out[0] + '<p class="muted">No samples.</p>'
    out.append('<p class="muted">A caption counts only when it equals the true one exactly.</p>'
               '<div class="cols">')
    n_audio = 0
    for modality in caption_modalities(results):
        items = [(i, c) for i, c in enumerate(results.captions) if c.modality == modality]
        flags = [c.correct for _, c in items]
        out.append(f'<div><p class="summary">{_e(modality)}\u2192text: {_e(count_text(flags))}</p>'
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


def render_html(results: DemoResults, assets: Assets, out_dir: str, max_players: int) -> str:
    """The whole page; the loss-curve PNGs it embeds are read back from ``out_dir``."""
    emb_t2a, emb_a2t = _audio_budget(results, max_players)
    fast = ' <span class="badge fast">fast mode</span>' if results.fast else ""
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("scores", "Scores"), ("t2i", "Text\u2192image"), ("t2a", "Text\u2192audio"),
        ("captions", "Captions"), ("training", "Training"), ("config", "Configuration"))
        if a != "config" or results.config_summary)
    intro = _e(intro_text(results)).replace("`latentlm demo`", "<code>latentlm demo</code>")
    body = [
        f"<h1>LatentLM demo: shapes &amp; tones{fast}</h1>",
        f'<p class="sub">{_e(time.strftime("%Y-%m-%d %H:%M"))} \u00b7 '
        f"{_e(duration_text(results.total_seconds))} total</p>",
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
