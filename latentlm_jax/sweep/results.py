"""A sweep's results: each point's workdir read into a row of ``W/sweep.csv`` and its curves.

A point is *finished* when its workdir holds the checkpoint of its last step (``train.num_steps``),
*partial* when it has started (a checkpoint or logged metrics), *missing* otherwise. Losses come
from the point's ``metrics.jsonl``: the final train ``loss`` and the last value of every ``eval/``
key the Task's evaluation wrote (``eval/loss``, ``eval/text_ce``, ``eval/diffusion/<modality>``,
...); cells a point lacks stay empty.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.sweep import format_value
from latentlm_jax.sweep.measure import Measures
from latentlm_jax.sweep.points import Point, point_workdir

POINT_FILE = "sweep_point.json"  # in a point's workdir: its name, overrides and wall time
CSV_FILE = "sweep.csv"
Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


@dataclasses.dataclass
class PointResult:
    point: Point
    measures: Measures
    num_steps: int
    status: str  # finished | partial | missing
    curves: dict[str, Curve]  # metric key → (steps, values), from metrics.jsonl
    wall_time_s: float | None

    @property
    def last_step(self) -> int:
        steps = self.curves.get("loss", (np.zeros(0, np.int64), None))[0]
        return int(steps[-1]) if steps.size else 0

    def final(self, key: str) -> tuple[int, float] | None:
        """(step, value) of ``key``'s last logged value, or None."""
        if key not in self.curves or not self.curves[key][0].size:
            return None
        steps, values = self.curves[key]
        return int(steps[-1]), float(values[-1])

    def eval_keys(self) -> list[str]:
        return [k for k in self.curves if k.startswith("eval/")]


def read_point_file(workdir: str) -> dict[str, Any]:
    path = paths.join(workdir, POINT_FILE)
    return json.loads(paths.read_text(path)) if paths.exists(path) else {}


def write_point_file(workdir: str, data: dict[str, Any]) -> None:
    paths.write_text(paths.join(workdir, POINT_FILE), json.dumps(data, indent=2) + "\n")


def is_finished(workdir: str, num_steps: int) -> bool:
    """Whether ``workdir`` holds the checkpoint of step ``num_steps`` (its final one)."""
    from latentlm_jax.train.checkpoint_io import checkpoint_steps

    return paths.exists(workdir) and num_steps in checkpoint_steps(workdir)


def read_curves(workdir: str) -> dict[str, Curve]:
    from latentlm_jax.demo.plots import read_metrics  # tolerant, and drops rewound rows

    return read_metrics(paths.as_str(paths.join(workdir, "metrics.jsonl")))


def _metrics_time_span(workdir: str) -> float | None:
    """Seconds between the first and last rows of metrics.jsonl (a run elsewhere: no wall time
    was recorded by the sweep; compilation before the first row is not counted)."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return None
    times = []
    for line in paths.read_text(path).splitlines():
        try:
            times.append(float(json.loads(line)["time"]))
        except (ValueError, KeyError, TypeError):
            continue
    return max(times) - min(times) if len(times) >= 2 else None


def collect(points: list[Point], measures: list[Measures], num_steps: list[int],
            workdir: str) -> list[PointResult]:
    """Reads every point's workdir under ``workdir/points/``."""
    out = []
    for point, m, steps in zip(points, measures, num_steps, strict=True):
        pw = point_workdir(workdir, point)
        curves = read_curves(pw) if paths.exists(pw) else {}
        if is_finished(pw, steps):
            status = "finished"
        elif curves or (paths.exists(pw) and paths.exists(paths.join(pw, "checkpoints"))):
            status = "partial"
        else:
            status = "missing"
        wall = read_point_file(pw).get("wall_time_s") if paths.exists(pw) else None
        if wall is None and status != "missing":
            wall = _metrics_time_span(pw)
        out.append(PointResult(point, m, steps, status, curves, wall))
    return out


def csv_rows(results: list[PointResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of sweep.csv: one row per point."""
    varied = list(dict.fromkeys(k for r in results for k in r.point.varied))
    evals = sorted(dict.fromkeys(k for r in results for k in r.eval_keys()))
    header = ["point", "size", "status", *varied, "overrides", "params", "unit", "steps",
              "num_steps", "tokens", "flops_per_step", "flops", "final_train_loss", *evals,
              "wall_time_s"]
    rows = []
    for r in results:
        m, step = r.measures, r.last_step
        row: dict[str, Any] = {
            "point": r.point.name, "size": r.point.size, "status": r.status,
            "overrides": " ".join(r.point.override_texts()), "params": m.params,
            "unit": m.unit, "steps": step, "num_steps": r.num_steps,
            "tokens": int(round(m.items_per_step * step)),
            "flops_per_step": f"{m.flops_per_step:.6g}", "flops": f"{m.flops_per_step * step:.6g}",
            "wall_time_s": "" if r.wall_time_s is None else f"{r.wall_time_s:.1f}"}
        for k in varied:
            row[k] = format_value(r.point.varied[k]) if k in r.point.varied else ""
        final = r.final("loss")
        row["final_train_loss"] = "" if final is None else f"{final[1]:.6g}"
        for k in evals:
            v = r.final(k)
            row[k] = "" if v is None else f"{v[1]:.6g}"
        rows.append(row)
    return header, rows


def write_csv(results: list[PointResult], workdir: str) -> str:
    header, rows = csv_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = paths.join(workdir, CSV_FILE)
    paths.write_text(path, buf.getvalue())
    return paths.as_str(path)
