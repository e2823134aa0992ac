"""From a sweep's results to its fits: which loss, which (compute, loss) pairs, which laws.

The loss is the held-out ``eval/loss`` when every point that has results logged it, else the
training loss (said in a note). L(C) is fitted on the compute frontier (fit.frontier: the final
points', or every logged point of every curve, binned); L(N, D) on the finished points' final
losses when they span at least two sizes and two token budgets.
"""

from __future__ import annotations

import dataclasses

import ml_collections as mlc
import numpy as np

from latentlm_jax.sweep.fit import (
    Fit,
    binned_frontier,
    fit_chinchilla,
    fit_power_law,
    pareto_frontier,
)
from latentlm_jax.sweep.results import PointResult

EVAL_KEY = "eval/loss"
TRAIN_KEY = "loss"
MIN_FINAL_FRONTIER = 4  # "auto" fits the final points when at least this many are on the frontier


@dataclasses.dataclass
class Analysis:
    metric: str  # the metrics.jsonl key fitted: eval/loss or loss
    mode: str  # final | curves
    frontier: tuple[np.ndarray, np.ndarray]  # (compute, loss) the L(C) fit ran on
    power_law: Fit | None
    chinchilla: Fit | None
    notes: list[str]

    def as_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode,
                "frontier_flops": self.frontier[0].tolist(),
                "frontier_loss": self.frontier[1].tolist(),
                "power_law": self.power_law.as_dict() if self.power_law else None,
                "chinchilla": self.chinchilla.as_dict() if self.chinchilla else None,
                "notes": self.notes}


def metric_key(results: list[PointResult]) -> str:
    started = [r for r in results if r.status != "missing"]
    if started and all(r.final(EVAL_KEY) is not None for r in started):
        return EVAL_KEY
    return TRAIN_KEY


def curve_points(r: PointResult, key: str, skip_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training FLOPs, loss) along a point's curve of ``key``, from ``skip_fraction`` of its
    steps on."""
    if key not in r.curves:
        return np.zeros(0), np.zeros(0)
    steps, values = r.curves[key]
    keep = (steps >= skip_fraction * r.num_steps) & (steps > 0) & (values > 0)
    return steps[keep] * r.measures.flops_per_step, values[keep]


def final_points(results: list[PointResult], key: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(FLOPs, loss, results) of the finished points' last value of ``key``."""
    c, l, which = [], [], []
    for r in results:
        final = r.final(key) if r.status == "finished" else None
        if final is not None and final[1] > 0:
            c.append(final[0] * r.measures.flops_per_step)
            l.append(final[1])
            which.append(r)
    return np.asarray(c, np.float64), np.asarray(l, np.float64), which


def analyse(results: list[PointResult], fit_config: mlc.ConfigDict) -> Analysis:
    notes = []
    key = metric_key(results)
    if key == TRAIN_KEY:
        notes.append(f"no {EVAL_KEY} in every point's metrics.jsonl (train.eval_every=0, or a "
                     "Task without evaluation): fitting the final training loss instead")
    fc, fl, finished = final_points(results, key)
    final_front = pareto_frontier(fc, fl)
    mode = fit_config.frontier
    if mode == "auto":
        mode = "final" if final_front.size >= MIN_FINAL_FRONTIER else "curves"
    if mode == "final":
        front_c, front_l = fc[final_front], fl[final_front]
    else:
        pairs = [curve_points(r, key, fit_config.skip_fraction) for r in results]
        cc = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
        cl = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0)
        idx = binned_frontier(cc, cl)
        front_c, front_l = cc[idx], cl[idx]
    power = None
    if front_c.size >= 3:
        try:
            power = fit_power_law(front_c, front_l, bootstrap=fit_config.bootstrap)
        except (ValueError, np.linalg.LinAlgError) as e:
            notes.append(f"L(C) not fitted: {e}")
    else:
        notes.append(f"L(C) not fitted: {front_c.size} frontier points (it needs 3)")
    chin = None
    params = np.asarray([r.measures.params for r in finished], np.float64)
    tokens = np.asarray([r.measures.items_per_step * r.final(key)[0] for r in finished],
                        np.float64)
    if len(np.unique(params)) >= 2 and len(np.unique(tokens)) >= 2:
        try:
            chin = fit_chinchilla(params, tokens, fl, bootstrap=fit_config.bootstrap)
        except (ValueError, np.linalg.LinAlgError) as e:
            notes.append(f"L(N, D) not fitted: {e}")
    return Analysis(key, mode, (front_c, front_l), power, chin, notes)


def summary_lines(analysis: Analysis) -> list[str]:
    """What ``latentlm sweep`` prints about the fits."""
    lines = [f"note: {n}" for n in analysis.notes]
    if analysis.power_law is not None:
        lines.append(f"{analysis.metric} vs training FLOPs, {analysis.mode} frontier: "
                     + analysis.power_law.describe())
    if analysis.chinchilla is not None:
        f = analysis.chinchilla
        lines.append(f"{analysis.metric}: " + f.describe())
        share = f["beta"] / (f["alpha"] + f["beta"])
        lines.append(f"compute-optimal: N_opt ∝ C^{share:.3g}, D_opt ∝ C^{1 - share:.3g} "
                     "(with C ∝ N·D)")
    return lines
