"""Metrics sinks: ``metrics.jsonl`` (one JSON object per log step), TensorBoard events, console."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    return v.item() if v.size == 1 else float(v.mean())


class MetricsWriter:
    """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/ (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._file = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(  # noqa: SIM115 - kept open for the run, closed in close()
                os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({k: _scalar(v) for k, v in scalars.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in row.items():
            if k not in ("step", "time"):
                self._tb.add_scalar(k, v, global_step=int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"
