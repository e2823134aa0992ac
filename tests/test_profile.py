"""``latentlm_jax/bench/profile.py`` and ``latentlm bench train --profile``: matmul FLOPs parsed
from compiled HLO against counts by hand (fused, batched, inside a loop body), a real trace read
back per op, and the CLI's report, files and errors. No timing is asserted beyond being
positive."""

from __future__ import annotations

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import pytest

from latentlm_jax.bench import profile
from tests.helpers import ROOT, config_path, latentlm_command, one_device_env


def _mlp_loss(a, b, c):
    h = jax.nn.silu(a @ b)  # [64, 48] · [48, 32]
    return jnp.einsum("bij,bjk->bik", h.reshape(4, 16, 32), c).sum()  # [4] × [16, 32] · [32, 8]


A, B, C = jnp.ones((64, 48)), jnp.ones((48, 32)), jnp.ones((4, 32, 8))
# jax.grad needs: a·b forward, its two gradients, and the einsum's two gradients (its forward
# value is not needed for the gradient of a sum).
MLP_GRAD_FLOPS = 3 * 2 * 64 * 48 * 32 + 2 * 2 * 4 * 16 * 32 * 8


def _compiled_grad():
    return jax.jit(jax.grad(_mlp_loss, (0, 1, 2))).lower(A, B, C).compile()


def test_parse_hlo_counts_every_matmul_of_a_gradient():
    hlo = profile.parse_hlo(_compiled_grad().as_text())
    dots = [i for i in hlo.values() if i["opcode"] == "dot"]
    assert sum(i["flops"] for i in dots) == MLP_GRAD_FLOPS
    assert "[64, 32] = [64, 48] · [48, 32]" in {i["dot"] for i in dots}
    assert any(i["dot"].startswith("[4, 16, 32] = ") for i in dots)  # the batched one
    # A fusion that wraps a dot carries the dot's FLOPs: the ENTRY computation's ops, which are
    # what the runtime runs and the trace names, hold every matmul exactly once.
    entry = [i for i in hlo.values() if i["entry"]]
    assert sum(i["flops"] for i in entry) == MLP_GRAD_FLOPS
    assert any(i["opcode"] == "fusion" and i["flops"] for i in entry)


def test_a_traced_call_is_summed_per_op(tmp_path):
    compiled = _compiled_grad()
    trace, timings = profile.profile_calls(lambda: compiled(A, B, C), 3, str(tmp_path))
    assert trace.endswith(".trace.json.gz") and os.path.getsize(trace) > 0
    assert len(timings) == 3 and all(t["seconds"] > 0 and t["page_faults"] >= 0 for t in timings)
    s = profile.summarize(trace, compiled.as_text(), 3, timings=timings)
    # every matmul ran once per call: the rows' FLOPs are the gradient's, per call
    assert sum(r["flops"] for r in s["matmuls"]) == MLP_GRAD_FLOPS
    assert s["matmul_flops"] + s["async_matmul_flops"] == MLP_GRAD_FLOPS
    assert all(r["seconds"] > 0 and r["count"] == 1 for r in s["matmuls"])
    assert s["op_seconds"] == pytest.approx(s["matmul_seconds"] + s["other_seconds"] + sum(
        r["seconds"] for r in s["matmuls"] if r["async"]))
    assert any(r["op"].endswith("silu))/div") or "silu" in r["op"] for r in s["others"])
    lines = profile.summary_lines(s)
    assert lines[0].startswith("profile: 3 traced calls")
    assert lines[3].startswith("  traced calls ") and lines[3].count(" s") >= 3
    assert any("[64, 32] = [64, 48] · [48, 32]" in line for line in lines)


def test_a_call_that_faulted_is_left_out(tmp_path):
    compiled = _compiled_grad()
    trace, timings = profile.profile_calls(lambda: compiled(A, B, C), 3, str(tmp_path))
    events = profile._trace_events(trace)
    windows = profile.call_windows(events)
    assert len(windows) == 3 and all(lo < hi for lo, hi in windows)
    assert windows[0][1] <= windows[1][0] <= windows[1][1] <= windows[2][0]
    # call 2 as if it had grown the heap: its ops are left out, the others averaged
    timings = [dict(t, page_faults=f) for t, f in zip(timings, (5, 250_000, 0), strict=True)]
    s = profile.summarize(trace, compiled.as_text(), 3, timings=timings)
    assert s["counted_calls"] == [0, 2]
    assert sum(r["flops"] for r in s["matmuls"]) == MLP_GRAD_FLOPS  # still once per call
    assert all(r["count"] == 1 for r in s["matmuls"])
    # the reference: the module's op events that start inside calls 1 and 3, summed by hand
    hlo = profile.parse_hlo(compiled.as_text())
    module = profile.module_name(compiled.as_text())
    kept = [e["dur"] for e in events if e.get("ph") == "X" and e.get("name") in hlo
            and hlo[e["name"]]["opcode"] not in profile.CONTAINERS
            and e.get("args", {}).get("hlo_module", module) == module
            and any(lo <= e["ts"] <= hi for lo, hi in (windows[0], windows[2]))]
    assert s["op_seconds"] == pytest.approx(sum(kept) * 1e-6 / 2)
    lines = profile.summary_lines(s)
    assert any(line.startswith("  counted          calls 1, 3 of 3: call 2 wrote into fresh "
                               "heap pages") for line in lines)
    # every call faulted: all are counted, and the report says the figures are not clean
    s = profile.summarize(trace, compiled.as_text(), 3,
                          timings=[dict(t, page_faults=50_000) for t in timings])
    assert s["counted_calls"] == [0, 1, 2]
    assert any("every call wrote into fresh heap pages" in line
               for line in profile.summary_lines(s))
    # a trace without timings (or from before the annotations) counts every call
    assert profile.summarize(trace, compiled.as_text(), 3)["counted_calls"] == [0, 1, 2]


def test_a_loop_body_matmul_counts_once_per_iteration_and_the_loop_not_at_all(tmp_path):
    def body(x, w):
        return jnp.tanh(x @ w), None

    @jax.jit
    def f(x, ws):
        return jax.lax.scan(body, x, ws)[0]

    x, ws = jnp.ones((32, 64)), jnp.ones((5, 64, 64)) * 0.01
    compiled = f.lower(x, ws).compile()
    trace, _ = profile.profile_calls(lambda: compiled(x, ws), 2, str(tmp_path))
    s = profile.summarize(trace, compiled.as_text(), 2)
    assert sum(r["flops"] for r in s["matmuls"]) == 5 * 2 * 32 * 64 * 64
    assert [r["count"] for r in s["matmuls"]] == [5]
    assert not any(r["op"].endswith("/while") or r["op"] == "(while)" for r in s["others"])


def test_no_calls_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="calls ≥ 1"):
        profile.profile_calls(lambda: A, 0, str(tmp_path))


BENCH_REF = config_path("bench_ref.py")
SHRINK = ("--config.model.num_layers=1", "--config.model.emb_dim=64",
          "--config.model.num_heads=2", "--config.model.num_kv_heads=2",
          "--config.model.head_dim=32", "--config.model.mlp_dim=128",
          "--config.model.head.width=64", "--config.model.head.depth=1",
          "--config.data.seq_len=32")


@pytest.mark.slow  # a subprocess that compiles the step and its parts (~15 s of CPU)
def test_bench_train_profile_reports_and_writes_the_trace(tmp_path):
    out_dir = tmp_path / "prof"
    cmd = latentlm_command("bench", "train", "--config", BENCH_REF, "--steps", "1",
                           "--warmup", "0", "--profile", str(out_dir), "--profile-steps", "2",
                           "--json", str(tmp_path / "b.jsonl"), *SHRINK)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_device_env(), cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for label in ("profile: 2 traced calls", "traced calls ", "matmuls by shape",
                  "other ops by JAX operation", "slowest single ops", "tensorboard --logdir"):
        assert label in proc.stdout, label
    summary = json.loads((out_dir / "profile_summary.json").read_text())
    assert "HloModule" in (out_dir / "train_step.hlo.txt").read_text()
    assert os.path.exists(summary["trace_file"])
    record = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[-1])
    # The traced matmuls are the step's: their FLOPs per call match the analytic count (which
    # also counts the causal attention in full; L = 32 computes it in full here) within 10%.
    traced = summary["matmul_flops"] + summary["async_matmul_flops"]
    assert 0.9 < traced / record["flops_per_step"] < 1.1
    assert record["profile"]["calls"] == 2


@pytest.mark.parametrize("args, message", [
    (("--profile", "PROF", "--profile-steps", "0"), "--profile-steps ≥ 1"),
    (("--profile", "gs://bucket/prof"), "local folder"),
])
def test_bad_profile_arguments_are_one_line(tmp_path, args, message):
    args = tuple(str(tmp_path / a) if a == "PROF" else a for a in args)
    proc = subprocess.run(latentlm_command("bench", "train", "--config", BENCH_REF, *args,
                                           *SHRINK), capture_output=True, text=True,
                          env=one_device_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------- train.profile_start_step in the trainer
def test_training_traces_the_configured_steps(tmp_path, capsys):
    from latentlm_jax.cli import main as cli_main
    from tests.test_storage_faults import TINY, train

    assert train(tmp_path, "--config.train.profile_start_step=1",
                 "--config.train.profile_steps=2") == 0
    out = capsys.readouterr().out
    assert f"profiled steps 2–3 into {tmp_path}/profile (latentlm profile" in out
    planes = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(planes) == 1 and planes[0].stat().st_size > 0
    # `latentlm profile` reads the window back: two steps, the step's matmuls, once each per step
    assert cli_main.main(["profile", str(tmp_path / "profile"), "--top", "3"]) == 0
    report = capsys.readouterr().out
    assert report.startswith("profile: 2 traced calls")
    # lm_tiny scans its layers: the loop body's matmuls count once per layer, so the traced
    # matmul FLOPs per step are the analytic count's (causal attention is computed in full at
    # this length, as the count assumes)
    from latentlm_jax.lm.task import LMTask
    from tests.helpers import tiny_lm_config

    summary = profile.summarize_dir(str(tmp_path / "profile"))
    # each traced step was waited for in its own annotation, with its time and faults recorded
    assert len(summary["timings"]) == 2 and all(t["seconds"] > 0 for t in summary["timings"])
    assert len(profile.call_windows(profile._trace_events(summary["trace_file"]))) == 2
    assert summary["counted_calls"] == profile.clean_calls(summary["timings"])
    c = tiny_lm_config()
    assert c.model.scan_layers
    traced = summary["matmul_flops"] + summary["async_matmul_flops"]
    assert 0.95 < traced / LMTask(c).flops_per_step(c) < 1.05
    # resumed after the window: one line says the window is not traced again
    assert cli_main.main(["train", "--config", config_path("lm_tiny.py"), "--workdir",
                          str(tmp_path), *TINY, "--config.train.num_steps=6",
                          "--config.train.profile_start_step=1"]) == 0
    assert "is before this run's first step 4 (resumed): not profiling" in capsys.readouterr().out


@pytest.mark.parametrize("setting, message", [
    (("--config.train.profile_start_step=3",), "the profiled steps 4–6 end after "
                                               "train.num_steps=4"),
    (("--config.train.profile_start_step=-2",), "must be ≥ 0, or -1 (off)"),
    (("--config.train.profile_start_step=0", "--config.train.profile_steps=0"),
     "train.profile_steps"),
])
def test_a_profile_window_outside_the_run_is_one_line(tmp_path, capsys, setting, message):
    from tests.test_storage_faults import one_line, train

    assert train(tmp_path / "w", *setting) == 2
    one_line(capsys, message)


def test_profile_of_a_folder_without_a_trace_is_one_line(tmp_path, capsys):
    from latentlm_jax.cli import main as cli_main
    from tests.test_storage_faults import one_line

    (tmp_path / "p").mkdir()
    assert cli_main.main(["profile", str(tmp_path / "p")]) == 2
    one_line(capsys, "is not a profile folder", profile.HLO_FILE, "*.trace.json.gz")
