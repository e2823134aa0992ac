"""The fast generation path gives the samples of the direct one: adaLN modulations precomputed for
every solver step (``DiffusionHead.modulations`` / ``apply_modulated``) against the head's own
``__call__``, step-indexed samplers against plain ones, the Generator's two paths against each
other, and ``latentlm bench generate`` printing its split."""

import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.data.tokenizer import ByteTokenizer
from latentlm_jax.diffusion import samplers
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.generate.generator import Generator, SamplingOptions
from latentlm_jax.modality import AUDIO, IMAGE
from latentlm_jax.models.diffusion_head import DiffusionHead
from latentlm_jax.models.latentlm import LatentLM
from tests.helpers import config_path, latentlm_command, one_device_env, tiny_model

TOK = ByteTokenizer()
SCHED = make_schedule("cosine")


def randomise(module: nnx.Module, seed: int) -> None:
    """Non-zero values for every parameter (the adaLN and output layers start at zero, which
    would make any two paths agree trivially)."""
    params = nnx.state(module, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(module, jax.tree.unflatten(tree, new))


def test_precomputed_modulations_equal_the_direct_head():
    head = DiffusionHead(latent_dim=3, cond_dim=16, width=8, depth=2, mlp_ratio=2.0,
                         rngs=nnx.Rngs(0))
    randomise(head, 1)
    hidden = jax.random.normal(jax.random.key(2), (4, 16))
    x_t = jax.random.normal(jax.random.key(3), (4, 3))
    ts = samplers.sampling_grid("dpm++2m", SCHED, 6)
    mods = head.modulations(hidden, ts)
    assert [m.shape for m in mods] == [(6, 4, 3, 8)] * 2 + [(6, 4, 2, 8)]
    # Every step at once: leading dims broadcast in both paths ([6, 4, ...] = steps × rows).
    direct = head(jnp.broadcast_to(x_t, (6, 4, 3)), jnp.broadcast_to(ts[:, None], (6, 4)),
                  hidden[None])
    assert float(jnp.abs(direct).min(axis=(1, 2)).min()) > 0  # not the zero-init identity
    np.testing.assert_allclose(head.apply_modulated(x_t, mods), direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.apply_modulated(x_t, tuple(m[2] for m in mods)), direct[2],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", samplers.METHODS)
def test_step_indexed_samplers_see_the_grid_index(method):
    grid = samplers.sampling_grid(method, SCHED, 5)

    def plain(x, t):
        return 0.3 * x + 0.01 * t

    def indexed(x, t, i):  # equals plain only if grid[i] is the t being evaluated
        return plain(x, t) + 100.0 * (grid[i] - t)

    kw = dict(num_steps=5, schedule=SCHED, eta=1.0)
    a = samplers.sample(method, plain, (3, 2), jax.random.key(0), **kw)
    b = samplers.sample(method, indexed, (3, 2), jax.random.key(0), step_indexed=True, **kw)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_guided_step_indexed_fn_passes_the_index():
    joint = lambda x, t, i: x * (1.0 + i)  # noqa: E731
    fn = samplers.batched_cfg_model_fn(joint, 3.0)
    x = jnp.ones((2, 1))
    np.testing.assert_allclose(fn(x, jnp.float32(0), jnp.int32(2)), 3.0 * x)


@pytest.mark.parametrize("modality,cfg", [(IMAGE, 3.0), (AUDIO, 2.0)])
def test_generator_fast_path_matches_the_direct_head(modality, cfg):
    m = tiny_model()
    m.image_latent_dim, m.audio_latent_dim, m.head.depth = 3, 5, 2
    model = LatentLM(m, rngs=nnx.Rngs(0))
    randomise(model, 4)
    opts = SamplingOptions(method="dpm++2m", steps=4, cfg_scale=cfg, max_audio_latents=3)
    prompts = ["a red circle", "notes C4 E4"]
    fast = Generator(model, m, TOK, image_latents=3)
    direct = Generator(model, m, TOK, image_latents=3, modulation_budget_bytes=0)
    a = fast.text_to_latents(prompts, modality, jax.random.key(7), opts)
    b = direct.text_to_latents(prompts, modality, jax.random.key(7), opts)
    assert [z.shape for z in a] == [z.shape for z in b]
    assert float(np.abs(np.concatenate(a)).max()) > 0.1
    for za, zb in zip(a, b, strict=True):
        np.testing.assert_allclose(za, zb, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bench_generate_prints_the_split():
    proc = subprocess.run(latentlm_command(
        "bench", "generate", "--config", config_path("latentlm_tiny.py"), "--batch", "1",
        "--steps", "2", "--span", "2", "--repeats", "1"),
        capture_output=True, text=True, env=one_device_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    for field in ("span of 2 latents", "dpm++2m 2 steps, cfg 3.0", "total per span:",
                  "backbone-only decode of span:", "head (solver) per span:",
                  "total / backbone-only:", "decode step at position   64:"):
        assert field in proc.stdout, proc.stdout


@pytest.mark.parametrize("flag,value", [("--span", "-1"), ("--steps", "0"), ("--batch", "0")])
def test_bench_generate_rejects_bad_sizes(capsys, flag, value):
    from latentlm_jax.cli.main import main

    assert main(["bench", "generate", "--config", config_path("latentlm_tiny.py"), flag,
                 value]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and flag in lines[0], lines
