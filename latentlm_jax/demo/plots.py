"""Loss-curve plots and small audio spectrogram thumbnails for the demo report.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``), so plotting never touches
global backend state and works headless.
"""

from __future__ import annotations

import json
import math

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from latentlm_jax import paths

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values), sorted by step, finite values only


def read_metrics(path: str) -> dict[str, Curve]:
    """Reads a ``metrics.jsonl`` into ``{key: (steps, values)}``.

    Tolerates a missing file, blank or truncated lines and non-numeric fields. The file is appended
    to across restarts: when the step goes backwards (a run resumed from an earlier checkpoint),
    the rows the abandoned run wrote from that step on are dropped, so each step has the values
    of the run that continued.
    """
    rows: dict[int, dict[str, float]] = {}
    if not paths.exists(path):
        return {}
    with paths.open_file(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(row, dict):
                continue
            vals = {k: float(v) for k, v in row.items()
                    if k not in ("step", "time") and isinstance(v, (int, float))
                    and not isinstance(v, bool)}
            if rows and step < max(rows):
                rows = {k: v for k, v in rows.items() if k < step}
            rows.setdefault(step, {}).update(vals)
    curves: dict[str, Curve] = {}
    for step in sorted(rows):
        for k, v in rows[step].items():
            if math.isfinite(v):
                curves.setdefault(k, ([], []))
                curves[k][0].append(step)
                curves[k][1].append(v)
    return {k: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for k, (s, v) in curves.items()}


def use_log_y(values: np.ndarray) -> bool:
    """Log scale when the curve is strictly positive and spans at least a factor of 5."""
    if values.size < 2 or np.any(values <= 0):
        return False
    return float(values.max() / values.min()) >= 5.0


def _ema(values: np.ndarray, span: int) -> np.ndarray:
    alpha = 2.0 / (span + 1)
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def plot_stage(title: str, metrics: dict[str, Curve], curves: list[str], out_path: str,
               dpi: int = 80) -> str | None:
    """Plots the requested curves of one stage, one panel per key, into a PNG.

    Returns the path written, or ``None`` when none of the keys has data.
    """
    keys = [k for k in curves if k in metrics and metrics[k][0].size > 0]
    if not keys:
        return None
    ncols = len(keys) if len(keys) <= 4 else 3
    nrows = math.ceil(len(keys) / ncols)
    width = 4.0 if ncols < 4 else 3.4
    fig = Figure(figsize=(width * ncols, 2.8 * nrows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=12)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        steps, values = metrics[key]
        if values.size > 50:  # noisy per-step losses: faint raw line + smoothed line on top
            ax.plot(steps, values, color="#1f77b4", alpha=0.25, linewidth=0.8)
            ax.plot(steps, _ema(values, max(5, values.size // 25)), color="#1f77b4", linewidth=1.6)
        else:
            ax.plot(steps, values, color="#1f77b4", linewidth=1.6, marker="." if values.size < 20
                    else None)
        if use_log_y(values):
            ax.set_yscale("log")
            # plain numbers at 1, 2 and 5 × 10^k instead of matplotlib's 2×10⁻¹ style labels
            plain = ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(plain)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.annotate(f"last {values[-1]:.4g}", xy=(1, 1), xycoords="axes fraction",
                    ha="right", va="bottom", fontsize=8, color="#555")
    paths.makedirs(paths.resolve(out_path).parent)
    with paths.open_file(out_path, "wb") as f:
        fig.savefig(f, format="png")
    return out_path


def spectrogram_rgb(wave: np.ndarray, sample_rate: int = 16000, max_hz: float = 2000.0,
                    frame: int = 512, hop: int = 256) -> np.ndarray:
    """A small log-magnitude spectrogram (low frequencies at the bottom) as uint8 RGB [F, T, 3].

    Shows the notes of a clip at a glance next to its audio player; limited to ``max_hz`` because
    every pitch of the dataset (and its second harmonic) lies below about 1.1 kHz.
    """
    x = np.nan_to_num(np.asarray(wave, np.float64).reshape(-1))
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    n = 1 + (x.size - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(frame), axis=-1))  # [T, frame/2+1]
    bins = int(max_hz * frame / sample_rate) + 1
    db = 20 * np.log10(spec[:, :bins].T + 1e-6)  # [F, T]
    top = max(float(db.max()), 0.0)  # a silent clip stays dark instead of amplifying the floor
    db = np.clip((db - (top - 60.0)) / 60.0, 0.0, 1.0)  # 60 dB range below the peak
    rgb = colormaps["magma"](db[::-1])[..., :3]
    return (rgb * 255).round().astype(np.uint8)
