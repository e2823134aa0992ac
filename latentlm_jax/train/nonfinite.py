"""The host side of the non-finite step guard (``train.nonfinite``; the device side is in
train/step.py).

The step itself keeps a NaN out of the parameters, optimizer state and EMA, so the loop never
syncs per step for it: it keeps each step's metrics (device arrays) since the last check, and
checks the state's ``halt_step`` only where it syncs anyway — when it fetches metrics, before every
checkpoint save and before an eval. A tripped guard stops the run with one line, before anything
after the bad step is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from latentlm_jax.data.bad_input import DataError

# Metrics that are not loss terms (the gradient is named separately, by grad_norm).
_NOT_TERMS = ("grad_norm", "param_norm", "lr", "nonfinite", "nonfinite_skipped")


class NonFiniteError(DataError):
    """A run stopped by the non-finite step guard (one line, exit 2 from the CLI)."""


class NonFiniteGuard:
    """Remembers the metrics of the steps since the last check (no sync) and checks the state."""

    def __init__(self, t: mlc.ConfigDict):
        self.mode, self.max_in_a_row = t.nonfinite, t.max_nonfinite
        self._recent: dict[int, dict[str, Any]] = {}

    def record(self, step: int, metrics: dict[str, Any]) -> None:
        self._recent[step] = metrics

    def check(self, state: dict, newest_checkpoint: Callable[[], int | None]) -> None:
        """Raises :class:`NonFiniteError` when the guard tripped since the last check."""
        halt = int(jax.device_get(state["nonfinite"]["halt_step"]))
        if halt:
            skipped = int(jax.device_get(state["nonfinite"]["skipped"]))
            metrics = jax.device_get(self._recent.get(halt, {}))
            raise NonFiniteError(self.message(halt, metrics, skipped, newest_checkpoint()))
        self._recent.clear()

    def message(self, step: int, metrics: dict[str, Any], skipped: int,
                newest: int | None) -> str:
        values = {k: float(np.asarray(v)) for k, v in metrics.items()
                  if k not in _NOT_TERMS and np.issubdtype(np.asarray(v).dtype, np.floating)}
        if "grad_norm" in metrics:
            values["grad_norm"] = float(np.asarray(metrics["grad_norm"]))
        bad = [("the gradient" if k == "grad_norm" else k)
               for k, v in values.items() if not np.isfinite(v)]
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items()) or "its metrics were not kept"
        bad = bad or ["a loss term or the gradient"]
        saved = (f"the newest checkpoint is step {newest}" if newest is not None
                 else "no checkpoint was saved")
        if self.mode == "halt":
            return (f"step {step} is not finite: {', '.join(bad)} ({shown}); stopped without "
                    f"saving it (train.nonfinite=halt): {saved}; "
                    f"--config.train.nonfinite=skip skips such steps")
        return (f"{self.max_in_a_row} steps in a row were not finite (train.max_nonfinite), the "
                f"last at step {step}: {', '.join(bad)} ({shown}); {skipped} skipped in all; "
                f"stopped (train.nonfinite=skip): {saved}")
