"""The demo's report: ``report/index.html`` (self-contained), ``report/report.md`` and PNG plots.

:func:`write_report` is the entry point: it writes the files both documents use
(``demo/assets.py``), then the HTML page (``demo/report_html.py``) and the Markdown document
(``demo/report_md.py``), all from one :class:`~latentlm_jax.demo.results.DemoResults`.
"""

from __future__ import annotations

import os

from latentlm_jax import paths as path_layer
from latentlm_jax.demo.assets import write_assets
from latentlm_jax.demo.report_html import render_html
from latentlm_jax.demo.report_md import render_md
from latentlm_jax.demo.results import DemoResults


def write_report(results: DemoResults, out_dir: str, *, max_audio_players: int = 48
                 ) -> dict[str, str]:
    """Writes index.html, report.md, loss-curve PNGs and sample files under ``out_dir``.

    Returns the paths written: "html", "markdown" and "plot:<stage name>" per plotted stage.
    """
    path_layer.makedirs(out_dir)
    assets = write_assets(results, out_dir)
    written = {"html": os.path.join(out_dir, "index.html"),
               "markdown": os.path.join(out_dir, "report.md")}
    path_layer.write_text(written["html"], render_html(results, assets, out_dir,
                                                       max_audio_players))
    path_layer.write_text(written["markdown"], render_md(results, assets))
    for st, rel in zip(results.stages, assets.plots, strict=True):
        if rel:
            key = f"plot:{st.name}"
            written[key if key not in written else f"{key} ({rel})"] = os.path.join(out_dir, rel)
    return written
