"""``W/sweep_loss_vs_flops.png``: loss against training FLOPs, log-log, one colour per model size.

Each point's curve is drawn along its training (FLOPs = step × FLOPs per step), its final value
marked; the frontier the fit ran on is crossed and the fitted L(C) drawn over it. matplotlib's
object API with the Agg canvas (no pyplot: no global backend state, works headless).
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from latentlm_jax import paths
from latentlm_jax.sweep.analysis import Analysis, curve_points
from latentlm_jax.sweep.fit import power_law
from latentlm_jax.sweep.results import PointResult

PLOT_FILE = "sweep_loss_vs_flops.png"


def size_label(r: PointResult) -> str:
    n = r.measures.params
    count = f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"
    return f"{r.point.size} ({count} params)" if r.point.size else f"{count} params"


def plot_sweep(results: list[PointResult], analysis: Analysis, workdir: str,
               dpi: int = 100) -> str:
    """Writes the plot into ``workdir``; returns its path."""
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    groups = list(dict.fromkeys(size_label(r) for r in results))  # sizes, in sweep order
    cmap = colormaps["viridis"]
    colours = {g: cmap(i / max(1, len(groups) - 1) * 0.9) for i, g in enumerate(groups)}
    labelled = set()
    for r in results:
        c, l = curve_points(r, analysis.metric, 0.0)
        if not c.size:
            continue
        g = size_label(r)
        ax.plot(c, l, color=colours[g], lw=1.2, alpha=0.8,
                label=None if g in labelled else g)
        labelled.add(g)
        ax.plot(c[-1:], l[-1:], "o", color=colours[g], ms=4)
    front_c, front_l = analysis.frontier
    if front_c.size:
        ax.plot(front_c, front_l, "x", color="black", ms=6, label=f"frontier ({analysis.mode})")
    if analysis.power_law is not None and front_c.size:
        grid = np.geomspace(front_c.min(), front_c.max(), 100)
        f = analysis.power_law
        ax.plot(grid, power_law(f, grid), "--", color="crimson", lw=1.5,
                label=f"fit: {f['a']:.3g}·C^-{f['b']:.3g} + {f['c']:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for which in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        which(ticker.FormatStrFormatter("%.3g"))  # losses as numbers, not 10^x
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(analysis.metric)
    ax.grid(True, which="both", alpha=0.3)
    if labelled or front_c.size:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = paths.join(workdir, PLOT_FILE)
    with paths.open_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return paths.as_str(path)
