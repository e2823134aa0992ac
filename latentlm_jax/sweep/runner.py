"""Runs a sweep's points in turn, each as the ``latentlm train`` subprocess its command says.

A subprocess per point keeps JAX state apart and makes each point exactly the run its printed
command is (``W/points/<name>/command.txt``). A finished point (its final checkpoint exists) is
skipped; an unfinished one resumes from its latest checkpoint, as ``latentlm train`` does. The
child's output goes to the console (indented) and to ``W/points/<name>/train.log``. A point that
fails is reported and the sweep goes on with the next; the results are written after every point.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time

import ml_collections as mlc
import numpy as np

from latentlm_jax import paths
from latentlm_jax.sweep.analysis import Analysis, analyse, summary_lines
from latentlm_jax.sweep.measure import Measures, measure
from latentlm_jax.sweep.plot import plot_sweep
from latentlm_jax.sweep.points import Point, command_line, point_workdir
from latentlm_jax.sweep.results import (
    PointResult,
    collect,
    is_finished,
    read_point_file,
    write_csv,
    write_point_file,
)
from latentlm_jax.train.metrics import format_duration

# How a point's training runs here: this interpreter's `latentlm` (the installed script may be
# another environment's).
CHILD_PROGRAM = (sys.executable, "-m", "latentlm_jax.cli.main")
FIT_FILE = "sweep_fit.json"


@dataclasses.dataclass
class Plan:
    """Every point with what it costs: built (and so every point's config checked) before any
    point runs."""

    points: list[Point]
    measures: list[Measures]
    num_steps: list[int]

    @classmethod
    def build(cls, points: list[Point]) -> Plan:
        configs = [p.config() for p in points]  # ConfigError naming the point, before any run
        return cls(points, [measure(c) for c in configs],
                   [int(c.train.num_steps) for c in configs])

    def flops(self, i: int) -> float:
        return self.measures[i].flops_per_step * self.num_steps[i]


def print_commands(points: list[Point], workdir: str) -> None:
    """One ``latentlm train`` line per point, nothing else (for a cluster's job launcher)."""
    for p in points:
        print(command_line(p, workdir))


def run_points(plan: Plan, workdir: str, sweep: mlc.ConfigDict,
               program: tuple[str, ...] = CHILD_PROGRAM) -> list[str]:
    """Trains every unfinished point in turn; returns the names of the points that failed."""
    paths.makedirs(workdir)
    n = len(plan.points)
    paths.write_text(paths.join(workdir, "sweep.json"), json.dumps(
        {"name": sweep.name, "sweep": sweep.to_dict(),
         "points": [p.name for p in plan.points]}, indent=2, default=str) + "\n")
    todo = [i for i, p in enumerate(plan.points)
            if not is_finished(point_workdir(workdir, p), plan.num_steps[i])]
    remaining = sum(plan.flops(i) for i in todo)
    print(f"sweep {sweep.name}: {n} points, {n - len(todo)} finished, {len(todo)} to run "
          f"({remaining:.3g} training FLOPs) in {paths.as_str(workdir)}", flush=True)
    failed, timings = [], []  # (FLOPs run, seconds) of the points run so far
    for i, point in enumerate(plan.points):
        pw = point_workdir(workdir, point)
        head = f"[sweep {i + 1}/{n}] {point.name}"
        if i not in todo:
            print(f"{head}: finished ({plan.num_steps[i]} steps), skipped", flush=True)
            continue
        latest = resume_step(pw)
        left = [plan.flops(j) for j in todo if j >= i]
        eta = f", sweep ETA {format_duration(estimate_seconds(timings, left))}" if timings else ""
        start = f"resuming from step {latest}" if latest else "starting"
        print(f"{head}: {start} ({plan.measures[i].params / 1e6:.3g}M params, "
              f"{plan.num_steps[i]} steps, {plan.flops(i):.3g} FLOPs{eta})", flush=True)
        t0 = time.perf_counter()
        rc = run_point(point, pw, program)
        elapsed = time.perf_counter() - t0
        info = read_point_file(pw)
        write_point_file(pw, {"name": point.name, "config": point.config_spec,
                              "overrides": point.override_texts(),
                              "wall_time_s": float(info.get("wall_time_s", 0.0)) + elapsed})
        timings.append((plan.flops(i) * (1.0 - (latest or 0) / plan.num_steps[i]), elapsed))
        if rc != 0:
            failed.append(point.name)
            print(f"{head}: failed (exit status {rc}); its output is in {pw}/train.log",
                  flush=True)
        else:
            print(f"{head}: done in {format_duration(elapsed)}", flush=True)
        write_csv(collect(plan.points, plan.measures, plan.num_steps, workdir), workdir)
    return failed


def resume_step(pw: str) -> int | None:
    """The step a point's training resumes from (its latest checkpoint), None when it starts."""
    from latentlm_jax.train.checkpoint_io import latest_step

    return latest_step(pw) if paths.exists(pw) else None


def estimate_seconds(timings: list[tuple[float, float]], flops_left: list[float]) -> float:
    """Seconds the points of ``flops_left`` will take, from the points run so far: a fixed cost
    per point (start-up, compilation) plus a cost per FLOP, fitted by least squares once two
    points with different FLOPs have run; before that, the mean time per point."""
    f, t = (np.asarray(v, np.float64) for v in zip(*timings, strict=True))
    if len(f) >= 2 and np.ptp(f) > 0:
        slope, intercept = np.polyfit(f, t, 1)
        if slope >= 0 and intercept >= 0:
            return float(sum(intercept + slope * x for x in flops_left))
        return float(t.sum() / f.sum() * sum(flops_left)) if f.sum() > 0 else 0.0
    return float(t.mean() * len(flops_left))


def run_point(point: Point, pw: str, program: tuple[str, ...] = CHILD_PROGRAM) -> int:
    """Runs one point's ``latentlm train`` to its end; returns its exit status."""
    paths.makedirs(pw)
    paths.write_text(paths.join(pw, "command.txt"), shlex.join(point.command(pw)) + "\n")
    log_path = paths.join(pw, "train.log")
    lines = [paths.read_text(log_path)] if paths.exists(log_path) else []
    # Its own session: Ctrl-C reaches the sweep alone, which then stops the point with SIGTERM,
    # so the trainer saves a checkpoint first (train/preemption.py).
    proc = subprocess.Popen(point.command(pw, program), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            print(f"    {line}", end="", flush=True)
            lines.append(line)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()  # SIGTERM: the trainer saves a checkpoint and exits; a re-run resumes
        proc.wait()
        raise
    finally:
        paths.write_text(log_path, "".join(lines))


def report(plan: Plan, workdir: str, sweep: mlc.ConfigDict) -> tuple[list[PointResult], Analysis]:
    """sweep.csv, the fits (printed, and in sweep_fit.json) and the plot, from the workdirs."""
    results = collect(plan.points, plan.measures, plan.num_steps, workdir)
    csv_path = write_csv(results, workdir)
    analysis = analyse(results, sweep.fit)
    paths.write_text(paths.join(workdir, FIT_FILE),
                     json.dumps(analysis.as_dict(), indent=2) + "\n")
    plot_path = plot_sweep(results, analysis, workdir)
    counts = {s: sum(r.status == s for r in results) for s in ("finished", "partial", "missing")}
    print(f"sweep {sweep.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f" of {len(results)} points")
    for r in results:
        if r.status != "finished":
            print(f"  {r.status}: {r.point.name} ({r.last_step}/{r.num_steps} steps)")
    for line in summary_lines(analysis):
        print(line)
    print(f"wrote {csv_path}, {paths.as_str(paths.join(workdir, FIT_FILE))} and {plot_path}")
    return results, analysis
