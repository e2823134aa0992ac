"""Progress lines for the demo's long loops (encoding, generation): count, rate and ETA."""

from __future__ import annotations

import sys
import time

from latentlm_jax.train.metrics import format_duration


class Progress:
    """``label done/total (rate/s, ETA …)`` lines: rewritten in place on a terminal, one line per
    update otherwise (logs, tests)."""

    def __init__(self, label: str, total: int, unit: str = "", stream=None):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.stream = sys.stdout if stream is None else stream
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int) -> None:
        seconds = time.perf_counter() - self.t0
        rate = done / seconds if seconds > 0 else 0.0
        eta = seconds / max(done, 1) * (self.total - done)
        unit = f" {self.unit}" if self.unit else ""
        line = (f"{self.label} {done}/{self.total} ({rate:,.1f}{unit}/s, "
                f"ETA {format_duration(eta)})")
        end = "\n" if done >= self.total or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=self.stream, flush=True)
