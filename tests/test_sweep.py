"""``latentlm sweep``: sweep files → points, the runner's skip / resume, the fits, and a 2-point
micro-sweep end to end (configs/sweeps/micro.py)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from latentlm_jax.cli import main as cli_main
from latentlm_jax.config.loading import (
    apply_overrides,
    load_config_file,
    parse_value,
    split_config_args,
)
from latentlm_jax.config.sweep import format_value
from latentlm_jax.sweep.fit import (
    binned_frontier,
    chinchilla,
    fit_chinchilla,
    fit_power_law,
    pareto_frontier,
    power_law,
)
from latentlm_jax.sweep.points import expand_points, load_sweep
from tests.helpers import LM_TINY, ROOT, config_path, latentlm_command, one_device_env, read_metrics


def sweep_file(tmp_path, body: str, name: str = "sweep.py") -> str:
    path = tmp_path / name
    path.write_text("from latentlm_jax.config.sweep import sweep_config\n\n\ndef get_config():\n"
                    "    s = sweep_config()\n" + textwrap.indent(textwrap.dedent(body), "    ")
                    + "    return s\n")
    return str(path)


GRID = f"""\
s.base = {LM_TINY!r}
s.sizes = {{"big": {{"model": {{"num_layers": 2, "emb_dim": 64}}}},
           "small": {{"model": {{"num_layers": 1, "emb_dim": 32}}}}}}
s.axes = {{"train": {{"learning_rate": (1e-3, 3e-4), "num_steps": (20, 40)}}}}
s.overrides = {{"train": {{"warmup_steps": 2}}, "data": {{"seq_len": 64}}}}
"""


# ------------------------------------------------------------------------------ fits
def test_power_law_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    a, b, c = 400.0, 0.15, 1.6  # loss 6.1 → 2.4 over five decades of compute, 0.5% noise
    compute = np.geomspace(1e13, 1e18, 15)
    loss = (a * compute**-b + c) * np.exp(rng.normal(0, 0.005, compute.size))
    f = fit_power_law(compute, loss, bootstrap=100)
    for name, truth, rel in (("a", a, 0.15), ("b", b, 0.05), ("c", c, 0.05)):
        assert abs(f[name] - truth) < rel * truth, (name, f[name])
        # the reported uncertainty is honest: truth within 4σ, and σ is not absurdly wide
        assert abs(f[name] - truth) < 4 * f.error(name), (name, f[name], f.error(name))
        assert f.error(name) < rel * truth
        assert f.bootstrap[f.names.index(name)] == pytest.approx(f.error(name), rel=0.6)
    np.testing.assert_allclose(power_law(f, compute), loss, rtol=0.015)
    # exact data: exact parameters
    exact = fit_power_law(compute, a * compute**-b + c)
    np.testing.assert_allclose(exact.values, [a, b, c], rtol=1e-4)


def test_chinchilla_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    truth = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 900.0, "beta": 0.28}
    n = np.repeat(np.geomspace(1e6, 1e8, 4), 4)
    d = np.tile(np.geomspace(1e7, 1e9, 4), 4)
    clean = truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]
    f = fit_chinchilla(n, d, clean * np.exp(rng.normal(0, 0.002, clean.size)))
    for name, value in truth.items():
        assert abs(f[name] - value) < 4 * f.error(name) + 1e-9, (name, f[name], f.error(name))
    assert f["alpha"] == pytest.approx(truth["alpha"], abs=0.03)
    assert f["beta"] == pytest.approx(truth["beta"], abs=0.03)
    exact = fit_chinchilla(n, d, clean)
    np.testing.assert_allclose(chinchilla(exact, n, d), clean, rtol=1e-6)
    assert exact["alpha"] == pytest.approx(truth["alpha"], rel=1e-3)


def test_fits_refuse_too_few_points():
    with pytest.raises(ValueError, match="3 parameters"):
        fit_power_law(np.array([1e10, 1e11]), np.array([3.0, 2.0]))
    with pytest.raises(ValueError, match="2 sizes"):
        fit_chinchilla(np.full(6, 1e6), np.geomspace(1e7, 1e9, 6), np.linspace(3, 2, 6))


def test_frontier_keeps_the_lowest_loss_at_each_compute():
    c = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    l = np.array([5.0, 4.0, 3.0, 3.5, 2.0, 2.5])
    assert pareto_frontier(c, l).tolist() == [0, 2, 4]
    # many curve points: at most one per log bin, and still a frontier
    cc = np.geomspace(1, 1e6, 600)
    idx = binned_frontier(cc, 1 / np.log1p(cc) + 0.01 * np.sin(cc), bins=12)
    assert 2 <= idx.size <= 12 and np.all(np.diff(cc[idx]) > 0)


def fake_results(losses_of, sizes=(1e6, 4e6, 16e6), budgets=(1000, 4000, 16000),
                 key="eval/loss"):
    """Finished points with one logged ``key`` each (no training): N × D from the lists."""
    from latentlm_jax.sweep.measure import Measures
    from latentlm_jax.sweep.points import Point
    from latentlm_jax.sweep.results import PointResult

    out = []
    for n in sizes:
        for steps in budgets:
            tokens = 1000.0 * steps
            curves = {key: (np.array([steps]), np.array([losses_of(n, tokens)])),
                      "loss": (np.array([steps]), np.array([losses_of(n, tokens) * 1.01]))}
            out.append(PointResult(Point(f"n{n:g}__s{steps}", f"n{n:g}", "x.py", {}, {}),
                                   Measures(int(n), 6.0 * n * 1000.0, "tokens", 1000.0),
                                   steps, "finished", curves, None))
    return out


def test_analysis_fits_the_final_frontier_and_chinchilla_when_sizes_and_budgets_vary():
    from latentlm_jax.config.sweep import sweep_config
    from latentlm_jax.sweep.analysis import analyse, summary_lines

    law = lambda n, d: 1.5 + 300.0 / n**0.35 + 800.0 / d**0.3  # noqa: E731
    results = fake_results(law)
    fit_config = sweep_config().fit
    fit_config.bootstrap = 20
    a = analyse(results, fit_config)
    assert (a.metric, a.mode, a.notes) == ("eval/loss", "final", [])
    compute = np.array([6.0 * r.measures.params * 1000.0 * r.num_steps for r in results])
    front = pareto_frontier(compute, np.array([law(r.measures.params, 1000.0 * r.num_steps)
                                               for r in results]))
    np.testing.assert_allclose(a.frontier[0], compute[front])
    assert a.chinchilla["alpha"] == pytest.approx(0.35, rel=1e-3)
    assert a.chinchilla["beta"] == pytest.approx(0.3, rel=1e-3)
    assert a.power_law is not None and a.power_law["b"] > 0
    lines = summary_lines(a)
    assert lines[0].startswith("eval/loss vs training FLOPs, final frontier: L(C)")
    assert "N_opt ∝ C^0.462" in lines[2]  # β / (α + β) = 0.3 / 0.65

    # no eval/loss anywhere: the training loss, said in a note; one size: no L(N, D)
    train_only = fake_results(law, sizes=(1e6,), budgets=(100, 200, 400, 800, 1600),
                              key="eval/other")
    b = analyse(train_only, fit_config)
    assert b.metric == "loss" and "fitting the final training loss" in b.notes[0]
    assert b.chinchilla is None and b.mode == "final" and b.frontier[0].size == 5


# ------------------------------------------------------------------------------ points
def test_points_expand_to_the_product_with_stable_names(tmp_path):
    s = load_sweep(sweep_file(tmp_path, GRID))
    points = expand_points(s)
    assert len(points) == 2 * 2 * 2
    # smallest size first (by parameters, not by name); axes' values in the order written
    assert [p.name for p in points[:4]] == [
        "small__learning_rate-0.001__num_steps-20", "small__learning_rate-0.001__num_steps-40",
        "small__learning_rate-0.0003__num_steps-20", "small__learning_rate-0.0003__num_steps-40"]
    assert all(p.name.startswith("big__") for p in points[4:])
    again = expand_points(load_sweep(sweep_file(tmp_path, GRID, "again.py")))
    assert [(p.name, p.overrides) for p in again] == [(p.name, p.overrides) for p in points]
    p = points[1]
    assert p.varied == {"train.learning_rate": 1e-3, "train.num_steps": 40}
    config = p.config()
    assert (config.model.num_layers, config.model.emb_dim, config.data.seq_len) == (1, 32, 64)
    assert (config.train.learning_rate, config.train.num_steps, config.train.warmup_steps) == \
        (1e-3, 40, 2)


def test_compute_optimal_rule_derives_num_steps_from_parameters(tmp_path):
    s = load_sweep(sweep_file(tmp_path, f"""\
        s.base = {LM_TINY!r}
        s.sizes = {{"a": {{"model": {{"num_layers": 1}}}}, "b": {{"model": {{"num_layers": 3}}}}}}
        s.tokens_per_param = 2.0
        s.overrides = {{"train": {{"warmup_steps": 1}}}}
        """))
    from latentlm_jax.sweep.measure import measure

    points = expand_points(s)
    for p in points:
        m = measure(p.config())
        steps = p.overrides["train.num_steps"]
        assert steps == int(np.ceil(2.0 * m.params / m.items_per_step))
        assert p.name == f"{p.size}__num_steps-{steps}"
        assert p.config().train.num_steps == steps
    assert points[0].overrides["train.num_steps"] < points[1].overrides["train.num_steps"]


def test_size_arg_passes_the_size_name_to_the_base_config(tmp_path):
    family = tmp_path / "family.py"
    family.write_text(textwrap.dedent("""\
        from latentlm_jax.config.base import base_config

        def get_config(size="one"):
            c = base_config()
            c.model.num_layers = {"one": 1, "two": 2}[size]
            return c
        """))
    s = load_sweep(sweep_file(tmp_path, f"""\
        s.base = {str(family)!r}
        s.sizes = {{"two": {{}}, "one": {{"model": {{"emb_dim": 32}}}}}}
        s.size_arg = True
        """))
    one, two = expand_points(s)
    assert (one.name, one.config_spec) == ("one", f"{family}:one")
    assert (one.config().model.num_layers, one.config().model.emb_dim) == (1, 32)
    assert (two.config().model.num_layers, two.config().model.emb_dim) == (2, 64)


def test_any_task_is_a_base_a_vae_sweep(tmp_path):
    """Nothing dispatches on model families: a σ-VAE config sweeps like an LM."""
    from latentlm_jax.sweep.runner import Plan

    s = load_sweep(sweep_file(tmp_path, f"""\
        s.base = {config_path("vae_image_tiny.py")!r}
        s.axes = {{"vae": {{"image": {{"channels": (8, 16)}}}}}}
        """))
    plan = Plan.build(expand_points(s))
    assert [p.name for p in plan.points] == ["channels-8", "channels-16"]
    small, big = plan.measures
    assert small.unit == "examples" and small.params < big.params
    assert small.flops_per_step < big.flops_per_step


def test_print_commands_parse_back_to_each_points_config(tmp_path, capsys):
    spec = sweep_file(tmp_path, GRID + 's.overrides.data.text_files = ("a b.txt", "c")\n')
    points = expand_points(load_sweep(spec))
    assert cli_main.main(["sweep", "--config", spec, "--workdir", str(tmp_path / "W"),
                          "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(points)
    for line, point in zip(lines, points, strict=True):
        argv = shlex.split(line)
        assert argv[:2] == ["latentlm", "train"]
        rest, overrides = split_config_args(argv[2:])
        assert rest == ["--config", LM_TINY, "--workdir", str(tmp_path / "W" / "points" /
                                                              point.name)]
        config = apply_overrides(load_config_file(rest[1]), overrides)
        assert config.to_dict() == point.config().to_dict()
        assert config.data.text_files == ("a b.txt", "c")
    assert not (tmp_path / "W").exists()  # printing commands does nothing else


@pytest.mark.parametrize("value", [True, False, 3, -2, 1e-3, 3e-4, 0.1 + 0.2, "x y", "",
                                   (1, 2), ("a",), (), ((1, 2), "z")])
def test_override_text_round_trips(value):
    current = {bool: False, int: 0, float: 0.0, str: "s", tuple: ()}[type(value)]
    assert parse_value("f", format_value(value), current) == value


BAD = [
    ("s.base = ''\n", "config.base: a sweep needs a base config"),
    ("s.base = 'no/such.py'\n", "config.base: config file not found: no/such.py"),
    (f"s.base = {LM_TINY!r}\ns.axis = 1\n", "config.axis: unknown sweep field"),
    (f"s.base = {LM_TINY!r}\ns.axes = {{'train': {{'num_steps': 10}}}}\n",
     "config.axes.train.num_steps: must be a non-empty tuple"),
    (f"s.base = {LM_TINY!r}\ns.axes = {{'train': {{'num_steps': (10, 10)}}}}\n",
     "repeats a value"),
    (f"s.base = {LM_TINY!r}\ns.axes = {{'train': {{'num_steps': (10, 20)}}}}\n"
     "s.overrides = {'train': {'num_steps': 5}}\n", "is set in both overrides and axes"),
    (f"s.base = {LM_TINY!r}\ns.tokens_per_param = 20.0\n"
     "s.overrides = {'train': {'num_steps': 5}}\n", "config.tokens_per_param: derives"),
    (f"s.base = {LM_TINY!r}\ns.fit.frontier = 'best'\n", "config.fit.frontier: must be one of"),
    (f"s.base = {LM_TINY!r}\ns.sizes = {{'a/b': {{}}}}\n", "config.sizes.a/b: a size name"),
    (f"s.base = {LM_TINY!r}\ns.axes = {{'model': {{'nope': (1, 2)}}}}\n",
     "config.model.nope: unknown key (sweep point nope-1)"),
    (f"s.base = {LM_TINY!r}\ns.axes = {{'train': {{'num_steps': (1.5, 2.5)}}}}\n",
     "config.train.num_steps: expected int, got '1.5' (sweep point num_steps-1.5)"),
]


@pytest.mark.parametrize("body,message", BAD)
def test_bad_sweep_files_are_one_line_exit_2(tmp_path, capsys, body, message):
    spec = sweep_file(tmp_path, body)
    for mode in ([], ["--print-commands"]):
        assert cli_main.main(["sweep", "--config", spec, "--workdir", str(tmp_path / "W"),
                              *mode]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "W").exists()


def test_a_plain_config_is_not_a_sweep_file(tmp_path, capsys):
    assert cli_main.main(["sweep", "--config", LM_TINY, "--workdir", str(tmp_path)]) == 2
    assert "is not a sweep file" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the runner
FAKE_TRAIN = """\
import sys, json
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
print("fake training")
sys.exit(3 if any("num_steps=40" in a for a in sys.argv) else 0)
"""


def test_runner_skips_finished_points_resumes_unfinished_and_reports_failures(
        tmp_path, monkeypatch, capsys):
    """The runner's decisions with a fake `latentlm train`: a point whose final checkpoint exists
    is not run; one with an earlier checkpoint is run (the trainer resumes it) and announced as
    resuming; a failing point is reported and the others still run."""
    from latentlm_jax.sweep import runner

    s = load_sweep(sweep_file(tmp_path, GRID))
    plan = runner.Plan.build(expand_points(s))
    names = [p.name for p in plan.points]
    finished = {names[0], names[4]}
    latest = {names[2]: 10}
    monkeypatch.setattr(runner, "is_finished",
                        lambda pw, steps: os.path.basename(pw) in finished)
    monkeypatch.setattr(runner, "resume_step", lambda pw: latest.get(os.path.basename(pw)))
    monkeypatch.setattr(runner, "write_csv", lambda results, workdir: None)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    work = str(tmp_path / "W")
    failed = runner.run_points(plan, work, s, program=(sys.executable, str(fake), str(calls)))
    out = capsys.readouterr().out
    ran = [json.loads(line) for line in calls.read_text().splitlines()]
    ran_names = [os.path.basename(a[a.index("--workdir") + 1]) for a in ran]
    assert ran_names == [n for n in names if n not in finished]
    assert failed == [n for n in ran_names if "num_steps-40" in n]
    for n in finished:
        assert f"{n}: finished (" in out and "skipped" in out
    assert f"{names[2]}: resuming from step 10" in out
    assert f"[sweep 2/8] {names[1]}: starting" in out and "sweep ETA" in out
    assert "failed (exit status 3)" in out and "    fake training" in out
    # each point's command (the `latentlm train` form) and wall time are kept in its workdir
    pw = os.path.join(work, "points", names[1])
    def read(name):
        with open(os.path.join(pw, name)) as f:
            return f.read()

    assert read("command.txt").startswith("latentlm train --config")
    assert json.loads(read("sweep_point.json"))["wall_time_s"] > 0
    assert "fake training" in read("train.log")
    # the arguments after the program are exactly the point's `latentlm train` arguments
    assert ran[0] == plan.points[1].command(pw, ())


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_micro_sweep_end_to_end(tmp_path, monkeypatch):
    """configs/sweeps/micro.py: 2 sizes of the tiny LM; CSV, fit and plot agree with the runs;
    a re-run skips the finished point and resumes the one whose last checkpoint was lost;
    --collect rebuilds the same table."""
    work = tmp_path / "W"
    cmd = latentlm_command("sweep", "--config", config_path("sweeps/micro.py"),
                           "--workdir", str(work))
    first = subprocess.run(cmd, cwd=ROOT, env=one_device_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[sweep 1/2] xs: starting" in first.stdout
    assert "[sweep 2/2] s: starting" in first.stdout

    with open(work / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["xs", "s"]
    assert all(r["status"] == "finished" and r["steps"] == "24" for r in rows)
    params = [int(r["params"]) for r in rows]
    flops = [float(r["flops"]) for r in rows]
    assert params[0] < params[1] and flops[0] < flops[1]
    assert all(int(r["tokens"]) == 24 * 4 * 64 for r in rows)
    for r in rows:
        metrics = read_metrics(work / "points" / r["point"])
        train = [m for m in metrics if "loss" in m]
        evals = [m for m in metrics if "eval/loss" in m]
        assert float(r["final_train_loss"]) == pytest.approx(train[-1]["loss"], rel=1e-5)
        assert float(r["eval/loss"]) == pytest.approx(evals[-1]["eval/loss"], rel=1e-5)
        assert float(r["wall_time_s"]) > 0
        assert float(r["flops"]) == pytest.approx(24 * float(r["flops_per_step"]), rel=1e-5)
    assert float(rows[1]["eval/loss"]) < float(rows[0]["eval/loss"])  # bigger is better here

    fit = json.loads((work / "sweep_fit.json").read_text())
    assert fit["metric"] == "eval/loss" and fit["mode"] == "curves"
    front_c, front_l = np.array(fit["frontier_flops"]), np.array(fit["frontier_loss"])
    assert front_c.size >= 3 and np.all(np.diff(front_c) > 0) and np.all(np.diff(front_l) < 0)
    law = fit["power_law"]
    assert law["b"] > 0 and law["num_points"] == front_c.size
    predicted = law["a"] * front_c ** -law["b"] + law["c"]
    np.testing.assert_allclose(predicted, front_l, rtol=0.1)
    assert "eval/loss vs training FLOPs, curves frontier: L(C)" in first.stdout
    png = (work / "sweep_loss_vs_flops.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # lose xs's last checkpoint: the re-run resumes it from step 12 and skips s
    shutil.rmtree(work / "points" / "xs" / "checkpoints" / "24")
    second = subprocess.run(cmd, cwd=ROOT, env=one_device_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[sweep 1/2] xs: resuming from step 12" in second.stdout
    assert "[sweep 2/2] s: finished (24 steps), skipped" in second.stdout
    assert "Resuming from checkpoint at step 12" in second.stdout

    before = (work / "sweep.csv").read_text()
    (work / "sweep.csv").unlink()
    monkeypatch.chdir(ROOT)  # the sweep file names its base relative to the repository
    assert cli_main.main(["sweep", "--config", config_path("sweeps/micro.py"),
                          "--workdir", str(work), "--collect"]) == 0
    assert (work / "sweep.csv").read_text() == before
