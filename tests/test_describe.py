"""Model families by size (configs/latentlm.py from the rules of config/families.py) and
``latentlm describe``: the proven pod sizes unchanged, the CPU sizes, parameter counts of the
built model against the analytic formulas, FLOPs against the task's count, the CLI."""

from __future__ import annotations

import math
import os
import re
import subprocess

import jax
import pytest

from latentlm_jax.cli.describe import flops_summary, parameter_counts
from latentlm_jax.cli.main import main
from latentlm_jax.config import families
from latentlm_jax.config.loading import ConfigError, apply_overrides, load_config_file
from latentlm_jax.modality import latent_dims
from latentlm_jax.train import state as state_lib
from latentlm_jax.train.tasks import get_task
from tests.helpers import LM_TINY, ROOT, config_path, latentlm_command, one_device_env

FAMILY = config_path("latentlm.py")

# The family as proven on TPU before the rules (configs/latentlm.py's hand-typed table of commit
# f30c974, sized in docs/benchmarks.md "LatentLM memory proofs"): layers, width, heads,
# topology, slices, global batch in 4096-token rows.
PROVEN = {
    "base": (12, 768, 12, "v5p:2x2x1", 1, 32),
    "medium": (24, 1024, 16, "v5p:2x2x2", 1, 64),
    "large": (24, 1536, 12, "v5p:2x2x4", 1, 128),
    "xl": (24, 2048, 16, "v5p:2x4x4", 1, 256),
    "3b": (32, 2560, 20, "v5p:4x4x4", 1, 256),
    "7b": (32, 4096, 32, "v5p:4x4x8", 1, 256),
    "13b": (40, 5120, 40, "v5p:4x8x8", 1, 256),
    "30b": (48, 6144, 48, "v5p:4x8x8", 2, 512),
}
CPU = ("t1", "t2", "t3", "t4")


def family(size: str, *overrides: str):
    return apply_overrides(load_config_file(f"{FAMILY}:{size}"), list(overrides))


def test_rules_reproduce_the_proven_family():
    for size, (layers, width, heads, topology, slices, batch) in PROVEN.items():
        c = family(size)
        m = c.model
        assert (m.num_layers, m.emb_dim, m.num_heads, m.num_kv_heads) == (
            layers, width, heads, heads), size
        assert m.head_dim == width // heads and m.mlp_dim == 4 * width
        assert (m.head.depth, m.head.width, m.head.mlp_ratio) == (3, 0, 4.0)
        assert (m.diffusion.batch_mul, m.diffusion.target_fraction) == (4, 0.5)
        assert (c.target_topology, c.target_slices, c.train.global_batch_size) == (
            topology, slices, batch), size
        tensor = 4 if size == "13b" else 1  # measured: 63.67 GiB vs 92.98 with FSDP alone
        assert dict(c.mesh.ici) == {"data": 1, "fsdp": -1, "context": 1, "tensor": tensor}
        assert dict(c.mesh.dcn) == {"data": slices, "fsdp": 1, "context": 1, "tensor": 1}
        assert (m.dtype, m.attention, m.scan_layers, m.remat_policy) == (
            "bfloat16", "splash", True, "full")
        assert (c.data.seq_len, m.vocab_size) == (4096, 32_000)


def test_docs_table_is_the_family():
    # docs/scaling.md "Which config, where": shape, parameters, topology and batch of each size
    with open(os.path.join(ROOT, "docs", "scaling.md"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\| `(\w+)` \| (\d+) × (\d+) \| ([\d.]+)B \| (?:(\d) slices of )?"
                      r"(v5p:\w+) \((\d+)(?: chips)?\) \| (\d+) \|", text, re.M)
    assert [r[0] for r in rows] == list(PROVEN)
    for size, layers, width, billions, slices, topology, chips, batch in rows:
        c = family(size)
        assert (c.model.num_layers, c.model.emb_dim) == (int(layers), int(width))
        assert (c.target_topology, c.target_slices) == (topology, int(slices or 1))
        assert c.train.global_batch_size == int(batch)
        assert families.tpu_sizing(c.model)["chips"] == int(chips)
        total = parameter_counts(c)["total"]
        assert round(total / 1e9, 2) == float(billions), size


def test_cpu_sizes_grow_and_run_on_a_cpu():
    totals, per_token = [], []
    for size in CPU:
        c = family(size)
        m = c.model
        assert (m.dtype, m.attention, m.scan_layers, m.remat_policy) == (
            "float32", "xla", False, "none")
        assert c.target_topology == "" and c.data.seq_len == 128 and c.data.tokenizer == "byte"
        assert m.head_dim == 64 and m.mlp_dim == 4 * m.emb_dim
        assert (m.head.depth, m.head.width, m.head.mlp_ratio) == (3, 0, 4.0)
        assert m.diffusion.batch_mul == 2  # latentlm_tiny's, as its target fraction
        assert latent_dims(m) == {1: 8, 2: 16}  # the demo's σ-VAE latents
        totals.append(parameter_counts(c)["total"])
        per_token.append(flops_summary(c)["per_item"])
    assert totals == sorted(totals) and len(set(totals)) == 4 and totals[-1] / totals[0] > 10
    assert per_token == sorted(per_token) and len(set(per_token)) == 4
    with open(os.path.join(ROOT, "docs", "scaling.md"), encoding="utf-8") as f:
        docs = f.read()
    for size, total in zip(CPU, totals, strict=True):  # docs/scaling.md lists them
        depth, width = family(size).model.num_layers, family(size).model.emb_dim
        listed = re.search(rf"`{size}`\s+{depth}×{width}\s+\(([\d.]+)M", docs)
        assert listed and float(listed[1]) == pytest.approx(total / 1e6, rel=0.01), size


def test_generic_specs_follow_the_same_rules():
    c = family("d4w128")
    assert (c.model.num_layers, c.model.emb_dim, c.model.num_heads) == (4, 128, 2)
    assert c.model.attention == "xla" and c.target_topology == ""
    assert family("d4w128-cpu").to_dict() == {**c.to_dict(), "name": "latentlm_d4w128-cpu"}
    assert family("d2w192").model.num_heads == 3
    # pod settings from the authors' smallest width, 128-wide heads above 1024
    pod = family("d32w3072")  # 4.83B in its blocks: 64 chips
    assert (pod.model.num_heads, pod.model.head_dim, pod.model.attention) == (24, 128, "splash")
    assert (pod.target_topology, pod.train.global_batch_size) == ("v5p:4x4x4", 256)
    assert family("d2w1024-cpu").model.attention == "xla"
    assert family("d2w512-pod").target_topology == "v5p:2x2x1"
    # the CPU sizes take a latents folder as latentlm_tiny.py does
    mine = family("t2:runs/mine/latents")
    assert mine.data.latents_dir == "runs/mine/latents" and mine.data.latent_files == ()
    assert mine.model.emb_dim == 128


@pytest.mark.parametrize("size, message", [
    ("huge", "unknown size 'huge'; choose one of base, medium"),
    ("d4w100", "the width must be a multiple of its 64-wide attention heads"),
    ("d0w128", "the depth must be ≥ 1"),
    ("d2w128-gpu", "unknown size 'd2w128-gpu'"),
    ("7b:runs/latents", "7b is a pod size: pass --config.data.latents_dir=runs/latents"),
])
def test_bad_sizes_are_config_errors(size, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        family(size)


def test_v5p_topologies():
    assert [families.v5p_topology(2**k) for k in range(2, 10)] == [
        "v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4", "v5p:4x4x8",
        "v5p:4x8x8", "v5p:8x8x8"]
    with pytest.raises(ValueError, match="power of two"):
        families.v5p_topology(48)


# ------------------------------------------------------------------------------ describe
@pytest.mark.parametrize("spec, overrides", [
    (f"{FAMILY}:7b", ()),
    (f"{FAMILY}:t2", ()),
    (LM_TINY, ()),  # text only, grouped key/value heads
    (f"{FAMILY}:t1", ("model.tie_embeddings=true", "model.audio_latent_dim=0",
                      "model.head.width=32", "model.head.mlp_ratio=3.0")),
])
def test_parameter_counts_of_the_built_model_are_the_analytic_ones(spec, overrides):
    c = apply_overrides(load_config_file(spec), list(overrides))
    m = c.model
    counts = parameter_counts(c)
    groups = {g: sum(parts.values()) for g, parts in counts["groups"].items()}
    dims = latent_dims(m)
    assert groups["backbone (decoder blocks)"] == families.decoder_params(m)
    assert groups["embeddings"] == families.embedding_params(m, dims)
    heads = {f"{name} head": families.diffusion_head_params(m, d)
             for name, d in zip(("image", "audio"), (m.image_latent_dim, m.audio_latent_dim),
                                   strict=True)
             if d}
    assert counts["groups"].get("diffusion heads", {}) == heads
    assert counts["total"] == sum(groups.values()) == sum(counts["modules"].values())
    _, params, _ = state_lib.abstract_model(get_task(c), c)  # the trainer's own abstract model
    assert counts["total"] == sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def test_family_proportions():
    # a block 16·E² (attention 4·E², SwiGLU 3·E·4E), a head ~49·E² (test_memory_proofs.py)
    for size in ("base", "7b", "30b"):
        m = family(size).model
        e, layers = m.emb_dim, m.num_layers
        assert families.decoder_params(m) == layers * (16 * e * e + 2 * e) + e
        assert families.diffusion_head_params(m, 16) == pytest.approx(49 * e * e, rel=1e-2)


@pytest.mark.parametrize("spec", [f"{FAMILY}:7b", f"{FAMILY}:t3", LM_TINY,
                                  config_path("vae_image_tiny.py")])
def test_flops_are_the_tasks(spec):
    c = load_config_file(spec)
    f = flops_summary(c)
    per_step = get_task(c).flops_per_step(c)
    assert f["per_step"] == per_step
    if c.task == "lm":
        tokens = c.train.global_batch_size * c.data.seq_len
        assert (f["unit"], f["items_per_step"]) == ("tokens", tokens)
        assert f["per_item"] == per_step / tokens
        assert f["total"] == per_step * c.train.num_steps
        if latent_dims(c.model):  # the heads with their K draws are a large share
            assert f["latent_per_token"] > 0.2 * f["per_item"]
            k = c.model.diffusion.batch_mul
            fewer = apply_overrides(load_config_file(spec), [f"model.diffusion.batch_mul={k - 1}"])
            assert flops_summary(fewer)["per_item"] < f["per_item"]
        else:
            assert f["latent_per_token"] == 0
    else:
        assert (f["unit"], f["items_per_step"]) == ("examples", c.train.global_batch_size)


def test_describe_cli_prints_counts_and_flops():
    run = subprocess.run(latentlm_command("describe", "--config", f"{FAMILY}:t2"), cwd=ROOT,
                         env=one_device_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    c = family("t2")
    counts, flops = parameter_counts(c), flops_summary(c)
    out = run.stdout
    assert re.search(rf"^  total +{counts['total']:,} ", out, re.M), out
    assert re.search(rf"^  backbone \(decoder blocks\) +{families.decoder_params(c.model):,} ",
                     out, re.M), out
    assert f"{flops['per_item']:.4g}" in out and "K = 2 draws" in out
    assert re.search(r"^  tokens per step +4,096 +\(32 rows × 128\)", out, re.M), out


def test_describe_bad_size_is_one_line(capsys):
    assert main(["describe", "--config", f"{FAMILY}:huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown size 'huge'" in err
