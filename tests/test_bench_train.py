"""``latentlm bench train`` and ``configs/bench_ref.py``: the analytic FLOPs of the reference
config against a count by hand, the synthetic batch's layout, the trainer's refusal of it, the
head part against the real loss, and the CLI's report and JSON line on a shrunk reference.
No timing is asserted beyond being positive."""

from __future__ import annotations

import json
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

from latentlm_jax import host_malloc
from latentlm_jax.bench.train import bench_train, diffusion_terms, kernel_time_line
from latentlm_jax.cli import main as cli_main
from latentlm_jax.config.loading import ConfigError, load_config_file
from latentlm_jax.data.packing import LATENT_KEYS, TEXT_KEYS
from latentlm_jax.data.synthetic import LATENT_ID, NUM_SPECIAL, synthetic_batch
from latentlm_jax.lm.cross_entropy import masked_cross_entropy
from latentlm_jax.lm.loss import latentlm_loss
from latentlm_jax.lm.task import LMTask
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.train.flops import lm_flops_split
from tests.helpers import ROOT, config_path, latentlm_command, one_device_env

BENCH_REF = config_path("bench_ref.py")
# bench_ref shrunk: 1 layer × 64, head depth 1 × 64, rows of 32 (a class token, 31 latents).
SHRINK = {"model.num_layers": 1, "model.emb_dim": 64, "model.num_heads": 2,
          "model.num_kv_heads": 2, "model.head_dim": 32, "model.mlp_dim": 128,
          "model.head.width": 64, "model.head.depth": 1, "data.seq_len": 32}


def shrunk_ref(**changes):
    c = load_config_file(BENCH_REF)
    for key, value in {**SHRINK, **changes}.items():
        *path, last = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[last] = value
    return c


def test_bench_ref_flops_equal_the_count_by_hand():
    """6 FLOPs per weight per token (4 for a matmul whose input needs no gradient: the latent
    input projection, the head's timestep and noisy-latent inputs), attention over the full
    256 × 256 scores, the head's condition projection once per position and the rest K=4 times."""
    c = load_config_file(BENCH_REF)
    tokens, e, w, f, d = 8 * 256, 512, 512, 1344, 16
    block = 4 * e * e + 3 * e * f  # q, k, v, o (8 heads of 64, no GQA) + SwiGLU
    backbone = (6 * (8 * block + e * 264) + 4 * d * e) * tokens  # + LM head (264 ids) + latent in
    attention = 3 * 8 * 2 * 2 * 256 * 8 * 64 * tokens
    per_draw = 4 * (256 * w + d * w) + 6 * (3 * (3 * w * w + 3 * w * f) + 3 * w * w + w * d)
    head = (6 * e * w + 4 * per_draw) * tokens
    split = lm_flops_split(c)
    assert split == {"backbone": backbone, "attention": attention, "head": head}
    assert (backbone, attention, head) == (307_744_473_088, 25_769_803_776, 467_211_911_168)
    assert sum(split.values()) == LMTask(c).flops_per_step(c) == 800_726_188_032
    # The peer harness's 801.38 GFLOP counts every weight 6× and has no LM head (docs).
    harness = 6 * tokens * (8 * block + e * w + d * e) + 6 * 4 * tokens * (
        3 * (3 * w * w + 3 * w * f) + 3 * w * w + w * d + 256 * w + d * w) + attention
    assert round(harness / 1e7) == 80138
    lm_head, inputs_4x = 6 * e * 264 * tokens, 2 * tokens * (d * e + 4 * (256 * w + d * w))
    assert sum(split.values()) == harness + lm_head - inputs_4x


def test_the_synthetic_batch_is_a_class_token_then_latents():
    c = shrunk_ref()
    b = synthetic_batch(c)
    task = LMTask(c)
    assert set(b) == set(TEXT_KEYS) | set(LATENT_KEYS)
    for k, v in b.items():
        assert v.shape == task.batch_shape(c, k)
        assert v.dtype == np.dtype(task.batch_dtypes(c).get(k, np.int32))
    tokens = b["tokens"]
    assert np.all((tokens[:, 0] >= NUM_SPECIAL) & (tokens[:, 0] < NUM_SPECIAL + 256))
    assert np.all(tokens[:, 1:] == LATENT_ID)
    assert np.all(b["modality"][:, 0] == 0) and np.all(b["modality"][:, 1:] == 1)
    assert np.all(b["latents"][:, 0] == 0) and np.all(np.abs(b["latents"][:, 1:]).sum(-1) > 0)
    assert b["latent_mask"][:, :-1].all() and not b["latent_mask"][:, -1].any()
    np.testing.assert_array_equal(b["latent_modality"], b["latent_mask"].astype(np.int8))
    assert not b["ce_mask"].any()
    np.testing.assert_array_equal(b["segment_ids"], 1)
    np.testing.assert_array_equal(b["positions"], np.broadcast_to(np.arange(32), (8, 32)))
    assert synthetic_batch(c, process_count=2)["tokens"].shape == (4, 32)

    text = shrunk_ref(**{"model.image_latent_dim": 0})
    t = synthetic_batch(text)
    assert set(t) == set(TEXT_KEYS)
    np.testing.assert_array_equal(t["targets"][:, :-1], t["tokens"][:, 1:])
    assert t["ce_mask"][:, :-1].all() and not t["ce_mask"][:, -1].any()
    assert t["tokens"].min() >= NUM_SPECIAL and t["tokens"].max() < text.model.vocab_size


def test_training_on_the_synthetic_source_is_one_line(tmp_path, capsys):
    from latentlm_jax.data.pipeline import make_source

    with pytest.raises(ConfigError, match="only `latentlm bench train` reads") as e:
        make_source(shrunk_ref())
    assert e.value.field == "data.source"
    code = cli_main.main(["train", "--config", BENCH_REF, "--workdir", str(tmp_path / "w"),
                          *(f"--config.{k}={v}" for k, v in SHRINK.items())])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("latentlm: error: config.data.source: 'synthetic'")
    assert not (tmp_path / "w").exists()  # refused before a workdir is made


def test_the_head_part_is_the_loss_minus_its_cross_entropy():
    """The split's head part computes exactly the diffusion terms of the train loss (with
    gathered targets: the path with more code; target_fraction 0 only skips the gather)."""
    c = shrunk_ref(**{"model.diffusion.target_fraction": 0.5})
    graphdef, params = nnx.split(LatentLM(c.model, rngs=nnx.Rngs(0)))
    batch = {k: jax.numpy.asarray(v) for k, v in synthetic_batch(c).items()}
    key = jax.random.key(3)

    @jax.jit
    def both(params):  # one compile, not one per op
        model = nnx.merge(graphdef, params)
        hidden = model.hidden(batch)
        ce, _ = masked_cross_entropy(model.logits(hidden), batch["targets"], batch["ce_mask"])
        return latentlm_loss(model, batch, key)[0], ce + diffusion_terms(model, batch, hidden, key)

    total, split = both(params)
    np.testing.assert_allclose(split, total, rtol=1e-6)


def test_bench_train_of_a_text_lm_has_no_head_part():
    c = shrunk_ref(**{"model.image_latent_dim": 0, "data.seq_len": 16,
                      "metrics.peak_tflops_per_device": 1.0})
    out = bench_train(c, steps=1, warmup=0, xla_flops=False)
    assert out["flops_head"] == 0 and "part_head_s" not in out
    assert out["latent_tokens_per_step"] == 0 and out["tokens_per_step"] == 8 * 16
    assert out["flops_per_step"] == LMTask(c).flops_per_step(c)
    assert out["peak_source"] == "config.metrics.peak_tflops_per_device"
    for key in ("step_median_s", "part_backbone_s", "part_optimizer_s", "part_data_s"):
        assert out[key] > 0
    assert np.isfinite(out["losses"]).all()
    with pytest.raises(ConfigError, match="--steps"):
        bench_train(c, steps=0)


@pytest.mark.slow  # a subprocess that compiles the step and its parts (~15 s of CPU)
def test_the_cli_prints_every_figure_and_appends_one_json_line(tmp_path):
    out_file = tmp_path / "bench.jsonl"
    out_file.write_text('{"earlier": 1}\n')
    cmd = latentlm_command("bench", "train", "--config", BENCH_REF, "--steps", "1",
                           "--warmup", "0", "--json", str(out_file),
                           *(f"--config.{k}={v}" for k, v in SHRINK.items()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_device_env(), cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for label in ("compile: step", "step time", "tokens/s", "latent tokens/s",
                  "model FLOPs/step", "backbone", "attention", "head", "XLA cost analysis",
                  "TFLOP/s per device", "matmul peak", "2048² float32 matmul", "MFU",
                  "backbone fwd+bwd", "diffusion head", "optimizer update",
                  "data wait", "host → device transfer", "kernel time", "page faults max"):
        assert label in proc.stdout, label
    lines = out_file.read_text().splitlines()
    assert len(lines) == 2
    r = json.loads(lines[1])
    c = shrunk_ref()
    assert r["flops_per_step"] == LMTask(c).flops_per_step(c)
    assert r["tokens_per_step"] == 8 * 32 and r["latent_tokens_per_step"] == 8 * 31
    for key in ("compile_s", "step_median_s", "step_min_s", "step_max_s", "tokens_per_s",
                "latent_tokens_per_s", "tflops_per_device", "peak_tflops_per_device",
                "part_backbone_s", "part_head_s", "part_optimizer_s", "part_data_s",
                "xla_flops_per_step"):
        assert r[key] > 0, key
    assert 0 < r["mfu"] < 1.5 and 0 < r["part_head_mfu"] < 1.5
    assert len(r["step_system_s"]) == len(r["step_page_faults"]) == len(r["step_times"]) == 1
    assert r["step_system_s"][0] >= 0 and r["step_page_faults"][0] >= 0
    assert 0.9 < r["xla_flops_per_step"] / r["flops_per_step"] < 1.2
    assert r["overrides"] == [f"{k}={v}" for k, v in SHRINK.items()]
    # `latentlm` set the allocator before JAX started (latentlm_jax/host_malloc.py) and says so:
    # jemalloc or tcmalloc where installed, else glibc's kept heap, with huge pages where glibc and
    # the kernel offer them and the host does not take back free memory (and why not where it does)
    env = host_malloc.host_malloc_environ(one_device_env()) or one_device_env()
    chosen = host_malloc.allocator_to_preload(one_device_env())
    if chosen is not None:  # jemalloc or tcmalloc is installed here: preloaded
        expected = f"{chosen[0]} ({chosen[1]})"
    elif host_malloc.huge_pages(env):
        expected = "retain, huge pages"
    elif host_malloc.host_takes_back_free_memory():
        expected = ("retain (no huge pages: this VM's host takes back free memory, so they map "
                    "slowly)")
    else:
        expected = "retain"
    assert r["host_malloc"] == expected and f"; host malloc {expected}\n" in proc.stdout


def test_the_kernel_time_line_names_the_slow_steps():
    """Steps over 1.5× the median are listed with their kernel seconds and page faults."""
    out = {"step_times": [1.4, 13.4, 1.5, 1.4, 3.0], "step_median_s": 1.5,
           "step_system_s": [0.0, 17.2, 0.01, 0.0, 0.5], "step_page_faults": [0, 1385, 2, 0, 90]}
    line = kernel_time_line(out)
    assert line == ("  kernel time         median 0.0100 s   max 17.2000 s per step; page faults "
                    "max 1,385; 2 steps over 1.5× the median: 13.40 s (17.20 s kernel, 1,385 "
                    "faults), 3.00 s (0.50 s kernel, 90 faults)")
    calm = dict(out, step_times=[1.4, 1.5, 1.5, 1.4, 1.6])
    assert kernel_time_line(calm).endswith("page faults max 1,385")
