"""LatentLM: inputs, joint loss against a hand computation, learning, and cached generation against
naive recomputation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from latentlm_jax.data.tokenizer import ByteTokenizer
from latentlm_jax.diffusion.loss import diffusion_loss
from latentlm_jax.diffusion.schedules import make_schedule
from latentlm_jax.generate.generator import Generator, SamplingOptions
from latentlm_jax.lm.cross_entropy import masked_cross_entropy
from latentlm_jax.lm.loss import latentlm_loss
from latentlm_jax.modality import AUDIO, IMAGE
from latentlm_jax.models.latentlm import LatentLM
from tests.helpers import tiny_model

TOK = ByteTokenizer()
N_IMG, D_IMG, D_AUD = 4, 3, 5


def model_cfg(**kw):
    m = tiny_model()
    m.image_latent_dim, m.audio_latent_dim = D_IMG, D_AUD
    m.head.depth = 2
    for k, v in kw.items():
        m[k] = v
    return m


def t2i_batch(seed=0):
    """One packed row: `<bos> caption <boi> z1..z4 <eoi> <eos>` then an audio→text document."""
    rng = np.random.default_rng(seed)
    cap = TOK.encode("a red circle")
    doc1 = [TOK.bos_id, *cap, TOK.boi_id] + [TOK.latent_id] * N_IMG + [TOK.eoi_id, TOK.eos_id]
    doc2 = [TOK.bos_id, TOK.boa_id, TOK.latent_id, TOK.latent_id, TOK.eoa_id, *TOK.encode("C4"),
            TOK.eos_id]
    tokens = np.array(doc1 + doc2, np.int32)[None]
    l = tokens.shape[1]
    n1 = len(doc1)
    seg = np.array([[1] * n1 + [2] * len(doc2)], np.int32)
    pos = np.array([list(range(n1)) + list(range(len(doc2)))], np.int32)
    modality = np.zeros((1, l), np.int8)
    latents = np.zeros((1, l, max(D_IMG, D_AUD)), np.float32)
    s = 2 + len(cap)
    modality[0, s:s + N_IMG] = IMAGE
    latents[0, s:s + N_IMG, :D_IMG] = rng.normal(size=(N_IMG, D_IMG))
    modality[0, n1 + 2:n1 + 4] = AUDIO
    latents[0, n1 + 2:n1 + 4, :D_AUD] = rng.normal(size=(2, D_AUD))
    nxt = np.roll(modality, -1, axis=1)
    same_doc = np.roll(seg, -1, axis=1) == seg
    same_doc[:, -1] = False
    latent_mask = (nxt > 0) & same_doc
    targets = np.roll(tokens, -1, axis=1)
    ce_mask = same_doc & ~latent_mask
    # audio: a latent followed by a latent predicts "continue" (<latent>) through the LM head
    ce_mask |= same_doc & (modality == AUDIO) & (nxt == AUDIO)
    return {k: jnp.asarray(v) for k, v in dict(
        tokens=tokens, targets=targets * same_doc, ce_mask=ce_mask, segment_ids=seg,
        positions=pos, modality=modality, latents=latents, latent_mask=latent_mask,
        latent_modality=np.where(latent_mask, nxt, 0).astype(np.int8)).items()}


def test_inputs_use_latent_projections_at_latent_positions():
    model = LatentLM(model_cfg(), rngs=nnx.Rngs(0))
    b = t2i_batch()
    x = model.embed_inputs(b["tokens"], b["modality"], b["latents"])
    text = model.embed(b["tokens"])
    img = model.latent_in["image"](b["latents"][..., :D_IMG])
    mod = np.asarray(b["modality"])[0]
    np.testing.assert_allclose(x[0][mod == 0], text[0][mod == 0], rtol=1e-6)
    np.testing.assert_allclose(x[0][mod == IMAGE], img[0][mod == IMAGE], rtol=1e-6)
    assert not np.allclose(x[0][mod == IMAGE], text[0][mod == IMAGE])


def test_loss_is_ce_plus_weighted_diffusion():
    cfg = model_cfg()
    cfg.diffusion.loss_weight = 0.5
    model = LatentLM(cfg, rngs=nnx.Rngs(1))
    b = t2i_batch()
    key = jax.random.key(3)
    loss, metrics = latentlm_loss(model, b, key)
    hidden = model.hidden(b)
    ce, _ = masked_cross_entropy(model.logits(hidden), b["targets"], b["ce_mask"])
    nxt = jnp.roll(b["latents"], -1, axis=1)
    sched = make_schedule("cosine")
    parts = []
    for m, d, name in ((IMAGE, D_IMG, "image"), (AUDIO, D_AUD, "audio")):
        mask = b["latent_mask"] & (b["latent_modality"] == m)
        part, _ = diffusion_loss(model.head(m), nxt[..., :d], hidden, mask,
                                 jax.random.fold_in(key, m), sched, batch_mul=4)
        np.testing.assert_allclose(metrics[f"diff/{name}"], part, rtol=1e-6)
        parts.append(part)
    np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(loss, ce + 0.5 * (parts[0] + parts[1]), rtol=1e-6)
    assert int(metrics["image_latents"]) == N_IMG and int(metrics["audio_latents"]) == 2


@pytest.mark.slow
def test_training_lowers_both_terms():
    model = LatentLM(model_cfg(), rngs=nnx.Rngs(2))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(3e-3)
    opt = tx.init(params)
    b = t2i_batch()

    @jax.jit
    def step(params, opt, key):
        def f(p):
            return latentlm_loss(nnx.merge(graphdef, p), b, key)

        (loss, m), g = jax.value_and_grad(f, has_aux=True)(params)
        up, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, up), opt, m

    first = None
    for i in range(150):
        params, opt, m = step(params, opt, jax.random.key(i % 4))
        first = first or {k: float(v) for k, v in m.items()}
    assert float(m["ce"]) < 0.3 * first["ce"]
    assert float(m["diff/image"]) < first["diff/image"]


NAIVE_LEN = 64  # the naive references' fixed row length (one eager compile of each op)


def naive_hidden(model, ids, mod, lat):
    """The last position's hidden state from a full recomputation over ``ids`` (no cache). The
    row is padded at the end to ``NAIVE_LEN`` with segment 0, which a causal mask keeps out of
    every real position: the same shapes each step, so eager mode compiles its ops once."""
    n, pad = len(ids), NAIVE_LEN - len(ids)
    assert pad >= 0, n
    batch = dict(tokens=jnp.asarray([ids + [0] * pad], jnp.int32),
                 modality=jnp.asarray([mod + [0] * pad], jnp.int8),
                 latents=jnp.asarray(np.array([lat + [np.zeros_like(lat[0])] * pad]), jnp.float32),
                 positions=jnp.arange(NAIVE_LEN)[None],
                 segment_ids=jnp.asarray([[1] * n + [0] * pad], jnp.int32))
    return model.hidden(batch)[:, n - 1]


def naive_text(model, latents, max_tokens):
    """Greedy captioning by full recomputation at every step (no cache)."""
    ids = [TOK.bos_id, TOK.boi_id] + [TOK.latent_id] * len(latents) + [TOK.eoi_id]
    mod = [0, 0] + [IMAGE] * len(latents) + [0]
    lat = [np.zeros(max(D_IMG, D_AUD))] * 2 + [np.pad(z, (0, D_AUD - D_IMG)) for z in latents] + [
        np.zeros(max(D_IMG, D_AUD))]
    out = []
    for _ in range(max_tokens):
        nxt = int(jnp.argmax(model.logits(naive_hidden(model, ids, mod, lat))[0]))
        if nxt == TOK.eos_id:
            break
        out.append(nxt)
        ids, mod, lat = ids + [nxt], mod + [0], lat + [np.zeros(max(D_IMG, D_AUD))]
    return TOK.decode(out)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True, False])
def test_cached_captioning_equals_naive_recomputation(scan):
    model = LatentLM(model_cfg(scan_layers=scan), rngs=nnx.Rngs(4))
    gen = Generator(model, model_cfg(scan_layers=scan), TOK, image_latents=N_IMG)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(N_IMG, D_IMG)).astype(np.float32) for _ in range(3)]
    opts = SamplingOptions(text_temperature=0.0, max_text_tokens=6)
    got = gen.latents_to_text(inputs, IMAGE, jax.random.key(0), opts)
    want = [naive_text(model, z, 6) for z in inputs]
    assert got == want


def naive_latents(model, caption, opts, key, n):
    """Text→image by full recomputation, DDIM at temperature 0 (deterministic), no guidance."""
    from latentlm_jax.diffusion import samplers

    sched = make_schedule("cosine")
    ids = [TOK.bos_id, *TOK.encode(caption), TOK.boi_id]
    mod = [0] * len(ids)
    lat = [np.zeros(D_AUD)] * len(ids)
    out = []
    for _ in range(n):
        h = naive_hidden(model, ids, mod, lat)
        head = model.head(IMAGE)
        z = samplers.sample("ddim", lambda x, t, h=h, head=head: head(
            x, jnp.broadcast_to(t, (1,)), h), (1, D_IMG), key, num_steps=opts.steps,
            schedule=sched, temperature=0.0)
        z = np.asarray(z)[0]
        out.append(z)
        ids, mod, lat = ids + [TOK.latent_id], mod + [IMAGE], lat + [np.pad(z, (0, D_AUD - D_IMG))]
    return np.stack(out)


@pytest.mark.slow
def test_cached_latent_generation_equals_naive_recomputation():
    model = LatentLM(model_cfg(), rngs=nnx.Rngs(5))
    # Give the heads non-zero output layers so the latents depend on the hidden states.
    for head in model.heads.values():
        head.out.kernel[...] = jax.random.normal(jax.random.key(1), head.out.kernel.shape) * 0.3
    gen = Generator(model, model_cfg(), TOK, image_latents=N_IMG)
    opts = SamplingOptions(method="ddim", steps=5, cfg_scale=1.0, temperature=0.0)
    captions = ["a red circle", "a big blue square in the top"]
    got = gen.text_to_latents(captions, IMAGE, jax.random.key(0), opts)
    for cap, z in zip(captions, got, strict=True):
        assert z.shape == (N_IMG, D_IMG)
        np.testing.assert_allclose(z, naive_latents(model, cap, opts, jax.random.key(0), N_IMG),
                                   rtol=2e-3, atol=2e-4)


def test_guidance_and_audio_stopping_run():
    model = LatentLM(model_cfg(), rngs=nnx.Rngs(6))
    gen = Generator(model, model_cfg(), TOK, image_latents=N_IMG)
    opts = SamplingOptions(steps=4, cfg_scale=3.0, max_audio_latents=5)
    out = gen.text_to_latents(["notes C4"] * 2, AUDIO, jax.random.key(1), opts)
    assert all(z.ndim == 2 and z.shape[1] == D_AUD and 1 <= len(z) <= 5 for z in out)
    assert all(np.isfinite(z).all() for z in out)


@pytest.mark.slow
def test_gathered_targets_give_the_same_loss_when_capacity_suffices():
    """Running the head only on gathered latent targets changes the draws' layout, not the
    math: with the same per-target noise the loss equals the every-position loss."""
    from latentlm_jax.lm.loss import gather_targets

    mask = jnp.asarray([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]], bool)
    vals = jnp.arange(12, dtype=jnp.float32).reshape(2, 6, 1)
    valid, dropped, (g,) = gather_targets(mask, 3, vals)
    np.testing.assert_array_equal(valid, [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(g[..., 0][valid], [1, 2, 4, 6])
    assert int(dropped) == 0
    valid, dropped, _ = gather_targets(mask, 2, vals)
    assert int(dropped) == 1 and int(valid.sum()) == 3

    cfg = model_cfg()
    full = LatentLM(cfg, rngs=nnx.Rngs(7))
    cfg.diffusion.target_fraction = 0.5
    gathered = LatentLM(cfg, rngs=nnx.Rngs(7))
    b = t2i_batch()
    # A zero head output makes the loss E‖ε‖² per target, independent of which draw lands where,
    # so both layouts agree up to sampling noise only through ε; compare CE exactly and the
    # counts, and the diffusion terms statistically over many keys.
    loss = nnx.jit(lambda model, key: latentlm_loss(model, b, key)[1])
    l_full = [loss(full, jax.random.key(i)) for i in range(64)]
    l_gath = [loss(gathered, jax.random.key(i)) for i in range(64)]
    np.testing.assert_allclose(l_full[0]["ce"], l_gath[0]["ce"], rtol=1e-6)
    assert int(l_gath[0]["image_latents"]) == N_IMG and int(l_gath[0]["image_latents_dropped"]) == 0
    for name in ("image", "audio"):
        a = np.mean([float(x[f"diff/{name}"]) for x in l_full])
        g = np.mean([float(x[f"diff/{name}"]) for x in l_gath])
        np.testing.assert_allclose(g, a, rtol=0.1)
        np.testing.assert_allclose(a, 1.0, rtol=0.1)  # E‖ε‖²/D at a zero-initialised head
