"""The LatentLM family (configs/latentlm.py), the FLOPs count MFU uses, and the memory proofs of
``latentlm bench memory`` (TPU topologies compiled on this CPU when libtpu is installed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from latentlm_jax.bench.memory import (
    abstract_batch,
    compile_for_topology,
    config_family,
    hbm_exhausted,
    hlo_flops,
)
from latentlm_jax.cli.platforms import default_to_cpu_without_accelerator
from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError, apply_overrides, load_config_file
from latentlm_jax.parallel.logical import activation_rules
from latentlm_jax.train import state as state_lib
from latentlm_jax.train.setup import build_setup
from latentlm_jax.train.tasks import get_task
from tests.helpers import FULL_PROOFS, ROOT, config_path, latentlm_command

FAMILY = config_path("latentlm.py")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="compiling for a TPU topology needs libtpu (pip install -e '.[tpu]'; "
                           "`make test` installs it)")

# The authors' Transformer_Base … Transformer_13B (depth × hidden size) and our ~30B step.
AUTHORS = {"base": (12, 768), "medium": (24, 1024), "large": (24, 1536), "xl": (24, 2048),
           "3b": (32, 2560), "7b": (32, 4096), "13b": (40, 5120), "30b": (48, 6144)}


def family(size: str, *overrides: str):
    config = load_config_file(f"{FAMILY}:{size}")
    return apply_overrides(config, list(overrides))


# ------------------------------------------------------------------------------ the family
def test_family_is_the_authors_scaling_family_plus_30b():
    assert config_family(FAMILY) == list(AUTHORS)
    for size, (layers, width) in AUTHORS.items():
        c = family(size)
        m = c.model
        assert (m.num_layers, m.emb_dim) == (layers, width)
        assert m.num_heads * m.head_dim == width and m.head_dim in (64, 128)
        # the authors' SwiGLU width: int(width · mlp_ratio 6 · 2/3 / 64) · 64
        assert m.mlp_dim == int(width * 6 * 2 / 3 / 64) * 64
        assert round(width * m.head.mlp_ratio) == m.mlp_dim and m.head.depth == 3
        assert m.image_latent_dim == c.vae.image.latent_dim > 0
        assert m.audio_latent_dim == c.vae.audio.latent_dim > 0
        assert m.dtype == "bfloat16" and c.data.seq_len >= 4096
        assert c.target_topology.startswith("v5p:")
        assert c.mesh.dcn.data == c.target_slices
    assert family("30b").target_slices == 2


def test_family_parameter_counts():
    # a block: attention 4·E² + SwiGLU 3·E·4E; a head: 3 blocks of adaLN 3·W² + SwiGLU 3·W·4W,
    # condition and timestep projections W² each, final adaLN 2·W² (W = E), plus vectors
    for size in ("7b", "30b"):
        c = family(size)
        e, layers = c.model.emb_dim, c.model.num_layers
        _, params, _ = state_lib.abstract_model(get_task(c), c)
        count = {k: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v))
                 for k, v in params.items()}
        assert count["decoder"] == pytest.approx(16 * layers * e * e, rel=1e-3)
        assert count["heads"] == pytest.approx(2 * 49 * e * e, rel=1e-2)
    assert 28.5e9 < count["decoder"] < 30e9  # the step beyond the authors' family is ~30B


def test_unknown_size_is_one_line():
    with pytest.raises(ConfigError, match="unknown size 'huge'; choose one of base, medium"):
        load_config_file(f"{FAMILY}:huge")


# ------------------------------------------------------------------------------ FLOPs
def hand_count_config():
    c = base_config()
    m = c.model
    m.num_layers, m.emb_dim, m.num_heads, m.num_kv_heads, m.head_dim = 2, 32, 4, 2, 8
    m.mlp_dim, m.vocab_size = 64, 264
    m.image_latent_dim, m.audio_latent_dim = 4, 0
    m.head.depth, m.head.width, m.head.mlp_ratio = 1, 16, 2.0
    m.diffusion.batch_mul, m.diffusion.target_fraction = 2, 0.25
    c.data.seq_len, c.train.global_batch_size = 16, 2
    return c


def test_analytic_flops_against_a_hand_count():
    c = hand_count_config()
    # Backbone per token: matmul weights q 32·32 + k,v 2·32·16 + o 32·32 + SwiGLU 3·32·64 = 9216
    # per layer, × 2 layers + LM head 32·264 = 26880 → 6 × 26880; attention QK^T + PV
    # 2 layers · 2 · 2 · 16 keys · 4 heads · 8 = 4096 forward → × 3.
    per_token = 6 * 26880 + 3 * 4096
    # Latent input projection (4 → 32) at all 16 positions, forward + weight gradient: 2·2·4·32.
    inputs = 16 * 2 * 2 * 4 * 32
    # Head on ceil(0.25 · 16) = 4 slots: condition 32 → 16 once (× 3); per draw (K = 2):
    # t_in 256 → 16 and x_in 4 → 16 (× 2: no input gradient), one block's adaLN 3·16·16 and
    # SwiGLU 3·16·32, t_out 16·16, final adaLN 2·16·16, out 16·4 (× 3), 2 FLOPs per MAC.
    per_draw = 2 * 2 * (256 * 16 + 4 * 16) + 3 * 2 * (3 * 256 + 3 * 16 * 32 + 256 + 512 + 64)
    head = 4 * (3 * 2 * 32 * 16 + 2 * per_draw)
    expected = 2 * (16 * per_token + inputs + head)
    assert expected == 6_162_432
    assert get_task(c).flops_per_step(c) == expected


def wide_latentlm(*overrides: str):
    """A LatentLM wide enough that matmuls dominate its FLOPs (as at scale), on one device."""
    return family("base", "model.num_layers=2", "model.emb_dim=256", "model.num_heads=4",
                  "model.num_kv_heads=4", "model.head_dim=64", "model.mlp_dim=1024",
                  "model.vocab_size=512", "data.seq_len=128", "train.global_batch_size=2",
                  "model.dtype=float32", "model.attention=xla", "model.scan_layers=false",
                  "mesh.ici.fsdp=1", "mesh.dcn.data=1", "model.remat_policy=none", *overrides)


def test_compiled_flops_agree_with_the_analytic_count():
    c = wide_latentlm()
    setup = build_setup(c, jax.devices()[:1])
    with activation_rules(setup.mesh, c.sharding_rules):
        lowered = setup.step_fn.lower(setup.abstract_state(), abstract_batch(setup, c))
    compiled = lowered.compile().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, list) else compiled
    analytic = setup.task.flops_per_step(c)
    assert compiled["flops"] == pytest.approx(analytic, rel=0.10)
    # the diffusion head (K = 4 draws on half the slots) is a large share: leaving it out fails
    backbone_only = setup.task.flops_per_step(apply_overrides(wide_latentlm(), [
        "model.image_latent_dim=0", "model.audio_latent_dim=0"]))
    assert compiled["flops"] > 1.3 * backbone_only
    # the bench's count (the HLO before optimisation, layers unrolled) is the compiled one
    unrolled = hlo_flops(c)
    assert unrolled == pytest.approx(compiled["flops"], rel=0.02)
    # scanned layers and full remat: still every layer, plus the recomputed forward
    remat = wide_latentlm("model.scan_layers=true", "model.remat_policy=full")
    recompute = setup.task.recompute_flops_per_step(remat)
    assert hlo_flops(remat) - unrolled == pytest.approx(recompute, rel=0.10)


def test_out_of_hbm_message_is_parsed():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
               "(including program, arguments and output) (240.65G) exceeds available HBM "
               "(95.74G) by 144.91G")
    assert hbm_exhausted(RuntimeError(message)) == (240.65, 95.74)
    assert hbm_exhausted(RuntimeError("INTERNAL: something else")) is None


# ------------------------------------------------------------------------------ TPU proofs
def tiny_tpu_latentlm(*overrides: str):
    return family("base", "model.num_layers=2", "model.emb_dim=128", "model.num_heads=2",
                  "model.num_kv_heads=2", "model.head_dim=64", "model.mlp_dim=512",
                  "model.vocab_size=1024", "data.seq_len=128", "train.global_batch_size=8",
                  *overrides)


@needs_libtpu
@pytest.mark.slow
def test_two_slices_compile_with_data_parallel_dcn():
    c = tiny_tpu_latentlm("target_topology=v5p:2x2x1", "target_slices=2", "mesh.dcn.data=2")
    before = dict(os.environ)
    out = compile_for_topology(c)
    # libtpu's start-up settings do not outlive it: TPU_WORKER_HOSTNAMES left behind made later
    # runs in this process (and their children) take themselves for hosts of a TPU pod.
    assert dict(os.environ) == before
    assert out["devices"] == 8 and out["slices"] == 2
    assert out["mesh"]["data"] == 2 and out["mesh"]["fsdp"] == 4
    assert out["fits"] and 0 < out["peak_gib"] < 1
    assert out["xla_flops"] == pytest.approx(out["analytic_flops"] + out["recompute_flops"],
                                             rel=0.10)
    with pytest.raises(ConfigError, match="mesh.dcn"):  # the DCN mesh must cover the slices
        compile_for_topology(c, slices=4)


@needs_libtpu
@pytest.mark.slow
def test_a_step_beyond_hbm_does_not_fit():
    # [B, H, L, L] f32 scores of 4 × 32768-token rows per chip: far beyond 95 GiB
    c = tiny_tpu_latentlm("model.attention=xla", "model.remat_policy=none",
                          "data.seq_len=32768", "train.global_batch_size=16")
    out = compile_for_topology(c, "v5p:2x2x1")
    assert out["fits"] is False and out["peak_gib"] > out["hbm_gib"] > 90
    assert out["refused_by_xla"]  # XLA's RESOURCE_EXHAUSTED became the answer, not a traceback


# The CLI proof of a family size: CI compiles a 2×256 model with the pod settings on v5p:2x2x1,
# cut to 4 rows of 256 tokens (XLA's TPU compile time grows with the batch: ~25 s on a 2-core
# AVX2 host, against ~70 s for the pod's 32 rows of 1024 and ~95 s of 4096); LATENTLM_FULL_PROOFS=1
# the family's smallest named size, base (12×768, 32 rows of 4096, ~130 s on a faster host).
# `latentlm bench memory --all` proves every size (docs/benchmarks.md).
PROOF_SIZE = "base" if FULL_PROOFS else "d2w256-pod"
PROOF_OVERRIDES = () if FULL_PROOFS else ("--config.data.seq_len=256",
                                          "--config.train.global_batch_size=4")


@needs_libtpu
@pytest.mark.slow
def test_bench_memory_proves_a_pod_size():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    env.pop("XLA_FLAGS", None)  # TPU compile flags as a user has them
    run = subprocess.run(latentlm_command("bench", "memory", "--config", FAMILY, "--sizes",
                                          PROOF_SIZE, *PROOF_OVERRIDES),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    row = run.stdout.splitlines()[-1].split()
    assert row[0] == PROOF_SIZE and row[3] == "v5p:2x2x1" and "yes" in row
    assert row[5] == ("32×4096" if FULL_PROOFS else "4×256")  # rows × tokens: overrides apply
    ratio = float(row[-2])
    assert 0.9 < ratio < 1.1


# ------------------------------------------------------------------------------ quiet CPU hosts
def test_platform_default_leaves_explicit_choices_and_accelerators_alone(monkeypatch):
    env = {"JAX_PLATFORMS": "cuda"}
    assert not default_to_cpu_without_accelerator(env) and env["JAX_PLATFORMS"] == "cuda"
    import latentlm_jax.cli.platforms as platforms

    monkeypatch.setattr(platforms, "tpu_attached", lambda: True)
    env = {}
    assert not default_to_cpu_without_accelerator(env) and env == {}
    monkeypatch.setattr(platforms, "tpu_attached", lambda: False)
    monkeypatch.setattr(platforms, "gpu_attached", lambda: False)
    assert default_to_cpu_without_accelerator(env) and env == {"JAX_PLATFORMS": "cpu"}


@pytest.mark.skipif(not HAS_LIBTPU, reason="the start-up noise comes from libtpu")
def test_cli_start_is_quiet_on_a_cpu_host_with_libtpu():
    import latentlm_jax.cli.platforms as platforms

    if platforms.tpu_attached() or platforms.gpu_attached():
        pytest.skip("this host has an accelerator")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    code = ("from latentlm_jax.cli.platforms import default_to_cpu_without_accelerator as f; "
            "f(); import jax; print(jax.devices()[0].platform)")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "cpu"
    assert "TPU" not in run.stderr, run.stderr[-1000:]
