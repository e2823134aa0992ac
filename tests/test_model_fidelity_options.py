"""The authors' model choices as config options (docs/fidelity.md rows 13, 15, 18):
``model.norm_scale``, ``model.rope_frequencies``, ``model.init``. Each against a NumPy reference of
the authors' formula, the defaults against values recorded before the options existed, and cached
decoding against the parallel forward with every option on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError, apply_overrides
from latentlm_jax.config.validate import validate
from latentlm_jax.models import layers
from latentlm_jax.models.latentlm import LatentLM
from latentlm_jax.models.transformer import init_cache
from tests.helpers import tiny_model

AUTHORS = {"norm_scale": False, "rope_frequencies": "authors", "init": "torch_default"}
D_IMG, D_AUD = 3, 5


def model_cfg(**kw):
    """A tiny LatentLM: both modalities, a class table, an untied LM head, 2-block heads."""
    m = tiny_model()
    m.image_latent_dim, m.audio_latent_dim, m.num_classes = D_IMG, D_AUD, 7
    m.head.depth = 2
    for k, v in kw.items():
        m[k] = v
    return m


def pure_params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def flat(params) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


# ------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize("scan, squares, absolute", [
    (True, 458.444372201072, 2105.9212576911677),
    (False, 458.23949676633396, 2100.073466139217)])
def test_defaults_build_the_parameters_they_built_before_the_options(scan, squares, absolute):
    # Recorded with the model code before these options were added (same seed, same shapes).
    p = pure_params(LatentLM(model_cfg(scan_layers=scan), rngs=nnx.Rngs(0)))
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(p)]
    assert len(leaves) == (57 if scan else 66)
    # rtol 1e-7: jax 0.12's initialisers differ from 0.10's in the last float32 bit of a few
    # weights (the sum of squares by 1.2e-9); a changed initialiser moves it by far more
    np.testing.assert_allclose(sum((x * x).sum() for x in leaves), squares, rtol=1e-7)
    np.testing.assert_allclose(sum(np.abs(x).sum() for x in leaves), absolute, rtol=1e-7)
    if scan:
        f = flat(p)
        for name, first in {
                "decoder/blocks/attn/q": [0.011146345175802708, 0.0012568064266815782],
                "decoder/blocks/mlp/down": [0.0016940436325967312, -0.014549470506608486],
                "heads/image/x_in/kernel": [0.023269986733794212, -0.01941147819161415],
                "label_embed": [-0.007043362595140934, 0.011251790449023247],
                "lm_head/kernel": [-0.012438871897757053, 0.012496081180870533]}.items():
            np.testing.assert_allclose(f[name].ravel()[:2], first, rtol=1e-6, err_msg=name)


def test_geometric_frequencies_are_the_original_formula():
    d, theta = 16, 10_000.0
    want = 1.0 / theta ** (np.arange(d // 2) * 2.0 / d)
    np.testing.assert_allclose(layers.rope_inv_freq(d, theta), want, rtol=1e-6)


# ------------------------------------------------------------------------------ norm_scale
def test_rmsnorm_without_gain_matches_numpy_and_has_no_parameter():
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32) * 3
    norm = layers.RMSNorm(16, eps=1e-5, rngs=nnx.Rngs(0), scale=False)
    assert jax.tree.leaves(nnx.state(norm, nnx.Param)) == []
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(norm(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)


def test_norm_scale_false_drops_exactly_the_gains_and_keeps_every_other_weight():
    cfg = model_cfg()
    with_gain = flat(pure_params(LatentLM(cfg, rngs=nnx.Rngs(0))))
    without = flat(pure_params(LatentLM(model_cfg(norm_scale=False), rngs=nnx.Rngs(0))))
    gains = {k for k in with_gain if k.endswith("/scale")}
    # per block 2 (stacked), final norm; per head: condition norm, one per block, final norm
    assert len(gains) == 3 + 2 * (1 + cfg.head.depth + 1)
    assert set(without) == set(with_gain) - gains
    for k, v in without.items():  # the same keys drawn: the other weights are identical
        np.testing.assert_array_equal(v, with_gain[k], err_msg=k)
    e, w = cfg.emb_dim, cfg.head.width or cfg.emb_dim
    dropped = sum(with_gain[k].size for k in gains)
    assert dropped == (2 * cfg.num_layers + 1) * e + 2 * (e + (cfg.head.depth + 1) * w)


def test_analytic_parameter_counts_follow_norm_scale():
    from latentlm_jax.cli.describe import parameter_counts
    from latentlm_jax.config import families

    c = base_config()
    c.model = model_cfg(norm_scale=False, num_classes=0)
    m = c.model
    groups = {g: sum(parts.values()) for g, parts in parameter_counts(c)["groups"].items()}
    assert groups["backbone (decoder blocks)"] == families.decoder_params(m)
    heads = parameter_counts(c)["groups"]["diffusion heads"]
    assert heads == {"image head": families.diffusion_head_params(m, D_IMG),
                     "audio head": families.diffusion_head_params(m, D_AUD)}


def test_imagenet_b_without_gains_differs_from_the_authors_count_by_our_extras_only():
    from latentlm_jax.cli.describe import parameter_counts
    from latentlm_jax.config.loading import load_config_file
    from tests.helpers import config_path
    from tests.test_class_conditional import authors_parameters

    c = apply_overrides(load_config_file(config_path("latentlm_imagenet.py") + ":b"),
                        ["model.norm_scale=false"])
    validate(c)
    depth, h, _, head_depth = 24, 768, 12, 6
    ours = parameter_counts(c)["total"]
    ada_bias = (3 * head_depth + 2) * h
    text = 2 * c.model.vocab_size * h  # an unused text embedding + LM head
    # theirs has the two latent embedders' biases; no norm gains on either side now
    assert ours - sum(authors_parameters(24, 768, 12, 6).values()) == ada_bias + text - 2 * h
    assert depth == c.model.num_layers and head_depth == c.model.head.depth


# ------------------------------------------------------------------------------ RoPE
def authors_rope_interleaved(x: np.ndarray, pos: np.ndarray, head_dim: int,
                             base: float) -> np.ndarray:
    """The authors' RoPE in NumPy: angle = pos · base^(−linspace(0, 1, D/2)) (``build_rel_pos``),
    applied to interleaved pairs (2j, 2j+1) (``interleaved=True``). x [B, L, H, D]."""
    freq = 1.0 / base ** np.linspace(0, 1, head_dim // 2)
    ang = pos[..., None].astype(np.float64) * freq  # [B, L, D/2]
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x, dtype=np.float64)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def test_authors_frequencies_match_their_formula():
    for d in (8, 64, 128):
        j = np.arange(d // 2)
        want = 10_000.0 ** (-j / (d // 2 - 1))
        np.testing.assert_allclose(layers.rope_inv_freq(d, 10_000.0, "authors"), want, rtol=2e-6)
    assert float(layers.rope_inv_freq(64, 10_000.0, "authors")[-1]) == pytest.approx(1e-4)


def test_authors_rope_is_theirs_up_to_the_channel_permutation():
    # Ours rotates (j, j + D/2); theirs (2j, 2j+1): with channels permuted, the same function.
    d, base = 16, 500.0
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 3, d)).astype(np.float32)
    pos = rng.integers(0, 300, size=(2, 7))
    perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])  # ours[i] = theirs[perm[i]]
    ours = layers.apply_rope(jnp.asarray(x[..., perm]), jnp.asarray(pos), base, "authors")
    theirs = authors_rope_interleaved(x, pos, d, base)
    np.testing.assert_allclose(ours, theirs[..., perm], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ init
def expected_init(name: str, cfg) -> tuple[str, float]:
    """(kind, bound-or-std) the authors' ``initialize_weights`` gives a parameter of ours."""
    e, hd = cfg.emb_dim, cfg.num_heads * cfg.head_dim
    w = cfg.head.width or e
    head_mlp = max(1, round(w * cfg.head.mlp_ratio))
    dims = {"image": D_IMG, "audio": D_AUD}
    parts = name.split("/")
    leaf = parts[-1] if parts[-1] != "kernel" else parts[-2]
    if leaf == "scale":
        return "ones", 1.0
    if name in ("embed/embedding", "label_embed") or leaf in ("t_in", "t_out"):
        return "normal", cfg.init_std
    if parts[-2] in ("ada", "final_ada") or leaf == "out":
        return "zeros", 0.0
    if name.startswith("decoder/"):
        fan_in = {"q": e, "k": e, "v": e, "o": hd, "gate": e, "up": e, "down": cfg.mlp_dim}[leaf]
    elif parts[0] in ("latent_in",) or leaf == "x_in":
        fan_in = dims[parts[1]]
    elif leaf in ("gate", "up"):
        fan_in = w
    else:
        fan_in = {"down": head_mlp, "cond_in": e, "lm_head": e}[leaf]
    return "uniform", fan_in ** -0.5


def test_torch_default_init_follows_the_authors_module_by_module():
    cfg = model_cfg(init="torch_default")
    cfg.head.width = 48  # a head narrower/wider than the model: fan-ins of its own
    params = flat(pure_params(LatentLM(cfg, rngs=nnx.Rngs(3))))
    for name, v in params.items():
        kind, a = expected_init(name, cfg)
        if kind == "ones":
            np.testing.assert_array_equal(v, 1.0, err_msg=name)
        elif kind == "zeros":
            np.testing.assert_array_equal(v, 0.0, err_msg=name)
        elif kind == "normal":  # sample std within 4 standard errors (1/√(2n) relative)
            assert v.size >= 200 and abs(v.std() / a - 1) < 4 / np.sqrt(2 * v.size), (
                name, v.std())
        else:
            assert np.abs(v).max() <= a, (name, np.abs(v).max(), a)
            if v.size >= 200:  # the range is filled: U(±a), std a/√3 (rel. s.e. 0.45/√n)
                assert np.abs(v).max() > 0.95 * a, name
                assert abs(v.std() / (a / np.sqrt(3)) - 1) < 2 / np.sqrt(v.size), (
                    name, v.std())


def test_torch_default_std_on_the_authors_b_sizes():
    # Their B model: fan-in 768 (q/k/v, FFN in) → std 0.0208; FFN out fan-in 2048 → 0.0128.
    mlp = layers.SwiGLU(768, 2048, init_std=0.02, dtype=jnp.float32, rngs=nnx.Rngs(0),
                        init="torch_default")
    for kernel, fan_in in ((mlp.gate, 768), (mlp.down, 2048)):
        v = np.asarray(kernel[...])
        assert np.abs(v).max() <= fan_in ** -0.5
        np.testing.assert_allclose(v.std(), 1 / np.sqrt(3 * fan_in), rtol=0.01)
        assert abs(v.mean()) < 1e-4


def test_an_unknown_init_is_refused_by_the_layers():
    with pytest.raises(ValueError, match="unknown init"):
        layers.projection_init("xavier", 0.02, 8)
    with pytest.raises(ValueError, match="unknown rope_frequencies"):
        layers.rope_inv_freq(8, 1e4, "linear")


# ------------------------------------------------------------------------------ config
def test_config_fields_validate_and_unknown_values_are_one_line_errors():
    c = apply_overrides(base_config(), [f"model.{k}={v}" for k, v in AUTHORS.items()])
    validate(c)
    assert (c.model.norm_scale, c.model.rope_frequencies, c.model.init) == (
        False, "authors", "torch_default")
    d = base_config().model
    assert (d.norm_scale, d.rope_frequencies, d.init) == (True, "geometric", "normal")
    for field, bad in (("init", "xavier"), ("rope_frequencies", "linspace")):
        with pytest.raises(ConfigError, match=rf"model\.{field}: must be one of"):
            validate(apply_overrides(base_config(), [f"model.{field}={bad}"]))
    assert layers.INITS == ("normal", "torch_default")
    assert layers.ROPE_FREQUENCIES == ("geometric", "authors")


# ------------------------------------------------------------------------------ decoding
def perturbed(model, seed=1):
    """Random nonzero weights everywhere (the heads' adaLN and outputs start at zero)."""
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(
        lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(np.float32), state))
    return model


def decode_vs_parallel(model, cfg, x, positions, prompt):
    """(hidden states of a prompt chunk then one-token steps through the KV cache, the parallel
    forward's), both jitted."""
    graphdef, state = nnx.split(model.decoder)
    b, n = positions.shape

    @jax.jit
    def parallel(state, x):
        return nnx.merge(graphdef, state)(x, positions, jnp.ones((b, n), jnp.int32))

    @jax.jit
    def extend(state, x, pos, cache, start):
        valid = jnp.ones(pos.shape, bool)
        return nnx.merge(graphdef, state).extend(x, pos, valid, cache, start)

    h, cache = extend(state, x[:, :prompt], positions[:, :prompt], init_cache(cfg, b, n), 0)
    steps = [h]
    for t in range(prompt, n):
        h, cache = extend(state, x[:, t:t + 1], positions[:, t:t + 1], cache, t)
        steps.append(h)
    return jnp.concatenate(steps, axis=1), parallel(state, x)


@pytest.mark.parametrize("scan", [True, False])
def test_cached_decoding_equals_the_parallel_forward_with_the_authors_choices(scan):
    cfg = model_cfg(scan_layers=scan, **AUTHORS)
    model = perturbed(LatentLM(cfg, rngs=nnx.Rngs(2)))
    rng = np.random.default_rng(0)
    n = 12
    tokens = jnp.asarray(rng.integers(0, 256, size=(2, n)), jnp.int32)
    modality = np.zeros((2, n), np.int8)
    modality[:, 6:10] = 1  # image latents
    latents = jnp.asarray(rng.normal(size=(2, n, D_AUD)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(n), (2, n)) + 40  # away from 0: RoPE matters
    x = model.embed_inputs(tokens, jnp.asarray(modality), latents)
    cached, full = decode_vs_parallel(model, cfg, x, positions, prompt=5)
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-5)
    blocks = model.decoder.blocks if scan else model.decoder.blocks[0]
    assert blocks.attn.rope_frequencies == "authors"  # the option reached the attention
