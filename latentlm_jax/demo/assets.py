"""The report's files: PNG and WAV bytes, data URIs, and the sample / plot files under report/.

Images are saved for report.md enlarged ×``MD_SCALE`` in the pixels themselves (Markdown viewers
apply no CSS); audio is 16 kHz 16-bit PCM WAV. :func:`write_assets` first removes the files an
earlier report wrote, so a smaller rerun leaves no stale samples behind.
"""

from __future__ import annotations

import base64
import io
import os
import re
import wave as wave_lib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentlm_jax import paths
from latentlm_jax.demo.plots import plot_stage, read_metrics, spectrogram_rgb
from latentlm_jax.demo.results import DemoResults

SAMPLE_RATE = 16000
MD_SCALE = 4  # pixel enlargement of the image files saved for report.md


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


def png_bytes(img: np.ndarray, scale: int = 1) -> bytes:
    """RGB PNG of ``img`` (uint8, or floats in [0, 1] / [0, 255]; gray or RGB[A]), enlarged
    ×``scale`` with nearest neighbour."""
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


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _write(path: str, data: bytes) -> None:
    paths.write_bytes(path, data)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "stage"


# ----------------------------------------------------------------------------------------------
# Files shared by both documents


@dataclass
class Assets:
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
        for name in paths.listdir(sub):
            if name.startswith(_OWNED_PREFIXES) and name.endswith((".png", ".wav")):
                paths.remove(os.path.join(sub, name))


def write_assets(results: DemoResults, out_dir: str) -> Assets:
    """Writes the loss-curve PNGs and the sample files (PNG / WAV / spectrogram PNG) under
    ``out_dir``, after removing those an earlier report wrote."""
    _clean(out_dir)
    paths.makedirs(os.path.join(out_dir, "images"))
    paths.makedirs(os.path.join(out_dir, "audio"))
    plots, last_values = [], []
    for i, st in enumerate(results.stages):
        metrics = read_metrics(st.metrics_path)
        rel = f"loss_{i:02d}_{_slug(st.name)}.png"
        written = plot_stage(st.name, metrics, st.curves, os.path.join(out_dir, rel))
        plots.append(rel if written else None)
        last_values.append({k: float(metrics[k][1][-1]) for k in st.curves if k in metrics})

    def spec(wave: np.ndarray, rel: str) -> str:
        _write(os.path.join(out_dir, rel), png_bytes(spectrogram_rgb(wave, SAMPLE_RATE), 2))
        return rel

    image_files = []
    for i, s in enumerate(results.images):
        rel = f"images/t2i_{i:03d}.png"
        _write(os.path.join(out_dir, rel), png_bytes(s.image, MD_SCALE))
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
            _write(os.path.join(out_dir, inp), png_bytes(c.image, MD_SCALE // 2))
        if c.wave is not None:
            wav = f"audio/a2t_{i:03d}.wav"
            _write(os.path.join(out_dir, wav), wav_bytes(c.wave))
            if inp is None:
                inp = spec(c.wave, f"images/spec_a2t_{i:03d}.png")
        caption_inputs.append(inp)
        caption_audio.append(wav)
    return Assets(plots, last_values, image_files, audio_files, audio_specs, caption_inputs,
                  caption_audio)
