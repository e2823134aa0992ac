"""No silent drops of diffusion targets (issue 16, item 3): the packer's per-row target budget.

- one slot formula for the loss, the FLOP count and the packer; the smallest fraction that fits;
- the demo's configs and the ``configs/latentlm.py`` sizes: their packers, fed documents of their
  span lengths, make rows whose targets the loss's gather never drops;
- rows of the real Grain pipeline (random latents in shards, seeds × ``cond_drop``, interleaved
  documents, a fifth of the captions empty) never exceed the budget; caption-dropped rows that
  would exceed it unbudgeted are closed at it;
- interleaved documents stop taking partners at the budget; a document that alone has more
  targets is a ``too_many_targets`` bad input; a span longer than the slots is a one-line config
  error through ``latentlm train``;
- the loss on budgeted rows equals the every-position loss (f = 0) under fixed noise.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.cli import main as cli_main
from latentlm_jax.config.loading import ConfigError, load_config_file
from latentlm_jax.data.array_record_source import write_latents
from latentlm_jax.data.bad_input import DataError, pop_skip_counts
from latentlm_jax.data.packing import RowPacker
from latentlm_jax.data.pipeline import build_train_iterator
from latentlm_jax.data.sequences import SequenceBuilder
from latentlm_jax.data.target_capacity import (
    check_span_budget,
    head_slots_per_row,
    smallest_fraction,
    target_budget,
)
from latentlm_jax.data.tokenizer import make_tokenizer
from latentlm_jax.lm.loss import gather_targets
from latentlm_jax.modality import AUDIO, IMAGE, MODALITY_NAMES, latent_dims, max_latent_dim
from latentlm_jax.train import flops, trainer
from latentlm_jax.vae.config import audio_latent_shape, image_latent_shape
from tests.helpers import TINY_MODEL, config_path

LATENTLM_TINY = config_path("latentlm_tiny.py")
SPANS = {IMAGE: 16, AUDIO: 25}  # the demo's σ-VAEs: a 4×4 image grid, 25 audio frames
DIMS = {IMAGE: 8, AUDIO: 16}
WORDS = ("a", "large", "red", "circle", "in", "the", "top", "left", "notes", "C4", "E4", "G4")


def targets_per_row(batch) -> dict[int, np.ndarray]:
    return {m: (batch["latent_mask"] & (batch["latent_modality"] == m)).sum(axis=1)
            for m in (IMAGE, AUDIO)}


# ------------------------------------------------------------------------------ the formula
def test_one_slot_formula():
    c = load_config_file(LATENTLM_TINY)
    assert flops.head_slots_per_row is head_slots_per_row  # the FLOP count's is the loss's
    assert head_slots_per_row(c.model, 128) == head_slots_per_row(0.4, 128) == 52
    assert head_slots_per_row(0.0, 128) == 128  # every position
    assert head_slots_per_row(1e-6, 128) == 1
    assert target_budget(c) == {IMAGE: 52, AUDIO: 52}
    c.model.diffusion.target_fraction = 0.0
    assert target_budget(c) is None  # the head runs on every position: nothing to bound
    for seq_len in (64, 128, 333, 4096):
        for targets in range(1, seq_len + 1, 7):
            f = smallest_fraction(targets, seq_len)
            assert head_slots_per_row(f, seq_len) >= targets
            if f > 0.001:  # three decimals: one step less is too small
                assert head_slots_per_row(round(f - 0.001, 3), seq_len) < targets


def test_a_span_over_the_slots_is_a_config_error():
    c = load_config_file(LATENTLM_TINY)
    check_span_budget(c, SPANS)  # 52 slots hold one span of 16 or 25
    c.model.diffusion.target_fraction = 0.15  # 20 slots
    with pytest.raises(ConfigError) as e:
        check_span_budget(c, SPANS)
    assert str(e.value) == (
        "config.model.diffusion.target_fraction: 0.15 gives the diffusion head 20 slots per "
        "row, fewer than the 25 targets of one audio span: set it to ≥ 0.188 (or 0: every "
        "position)")
    assert head_slots_per_row(0.188, 128) == 25 > head_slots_per_row(0.187, 128)
    c.model.diffusion.target_fraction = 0.0
    check_span_budget(c, {IMAGE: 500, AUDIO: 500})  # every position: no budget


# ------------------------------------------------------------------------------ the configs
def random_records(rng, spans: dict[int, int], dims: dict[int, int], n: int) -> list[dict]:
    """Pre-encoded records as `latentlm encode` writes them; a fifth of the captions empty."""
    out = []
    for i in range(n):
        m = (IMAGE, AUDIO)[i % 2] if len(spans) > 1 else next(iter(spans))
        caption = "" if rng.random() < 0.2 else " ".join(rng.choice(WORDS, rng.integers(1, 9)))
        out.append({"latents": rng.normal(size=(spans[m], dims[m])).astype(np.float32),
                    "caption": caption, "modality": MODALITY_NAMES[m]})
    return out


def packed_rows(c, spans: dict[int, int], rows: int, budget) -> dict[str, np.ndarray]:
    """``rows`` rows of ``c``'s documents (its task weights, cond_drop, interleaving; random
    latents of ``spans``) packed by a RowPacker with ``budget``, as the pipeline does."""
    d = c.data
    tok = make_tokenizer(d) if d.tokenizer == "byte" else make_tokenizer(
        load_config_file(LATENTLM_TINY).data)  # lengths only: the byte tokenizer will do
    dims = latent_dims(c.model)
    records = random_records(np.random.default_rng(0), {m: spans[m] for m in dims}, dims, 64)
    builder = SequenceBuilder(tok, weights=d.task_weights or None, cond_drop=d.cond_drop,
                              max_interleaved=d.max_interleaved, lookup=records.__getitem__,
                              lookup_len=len(records), seed=1, max_len=d.seq_len,
                              pre_encoded=True, target_budget=budget)
    packer = RowPacker(d.seq_len, latent_id=tok.latent_id, latent_dim=max_latent_dim(c.model),
                       target_budget=budget)
    out, i = [], 0
    while len(out) < rows:
        doc = builder(i, records[i % len(records)])
        i += 1
        if not packer.add(doc):
            out.append(packer.flush())
            assert packer.add(doc)
    return {k: np.stack([r[k] for r in out]) for k in out[0]}


def assert_nothing_dropped(c, batch) -> None:
    """The loss's own gather on these rows drops nothing."""
    slots = head_slots_per_row(c.model, c.data.seq_len)
    for m, counts in targets_per_row(batch).items():
        mask = jnp.asarray(batch["latent_mask"] & (batch["latent_modality"] == m))
        valid, dropped, _ = gather_targets(mask, slots, mask)
        assert int(dropped) == 0 and int(valid.sum()) == counts.sum()


def demo_spans(demo) -> dict[int, int]:
    h, w, _ = image_latent_shape(demo.vae_image.vae)
    return {IMAGE: h * w, AUDIO: audio_latent_shape(demo.vae_audio.vae)[0]}


@pytest.mark.parametrize("spec", ["demo.py", "demo_fast.py", "latentlm_tiny.py",
                                  "latentlm.py:t1", "latentlm.py:t4"])
def test_the_cpu_configs_cannot_drop(spec):
    c = load_config_file(config_path(spec))
    spans = SPANS
    if spec.startswith("demo"):
        spans = demo_spans(c)
        assert spans == SPANS
        c = c.lm
    check_span_budget(c, spans)
    budget = target_budget(c)
    assert budget == {IMAGE: 52, AUDIO: 52}
    batch = packed_rows(c, spans, 48, budget)
    assert_nothing_dropped(c, batch)
    # unbudgeted, the same documents make rows that would drop targets
    free = packed_rows(c, spans, 48, None)
    assert max(v.max() for v in targets_per_row(free).values()) > 52


def test_the_pod_sizes_cannot_drop():
    """4096-token rows, half of them slots: the σ-VAE defaults' spans and 256-latent images."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("latentlm_sizes", config_path("latentlm.py"))
    family = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(family)
    c = load_config_file(f"{config_path('latentlm.py')}:base")
    defaults = {IMAGE: int(np.prod(image_latent_shape(c.vae)[:2])),
                AUDIO: audio_latent_shape(c.vae)[0]}
    for size in family.SIZES:
        s = load_config_file(f"{config_path('latentlm.py')}:{size}")
        assert target_budget(s) == {IMAGE: 2048, AUDIO: 2048}
        for spans in (defaults, {IMAGE: 256, AUDIO: 25}):
            check_span_budget(s, spans)
    for spans in (defaults, {IMAGE: 256, AUDIO: 25}):
        assert_nothing_dropped(c, packed_rows(c, spans, 3, target_budget(c)))


# ------------------------------------------------------------------------------ real rows
@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> str:
    """Shards of random latents as `latentlm encode` writes them (the demo's span lengths and
    dims, stats with the sequence length); a fifth of the captions are empty."""
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    for m in (IMAGE, AUDIO):
        name = MODALITY_NAMES[m]
        records = random_records(rng, {m: SPANS[m]}, DIMS, 48)
        write_latents(str(root / f"latents-{name}-00000-of-00001.array_record"), records)
        (root / f"stats-{name}.json").write_text(json.dumps(
            {"modality": name, "latent_dim": DIMS[m], "sequence_length": SPANS[m]}))
    return str(root)


def tiny_config(latents_dir: str, **data):
    c = load_config_file(LATENTLM_TINY)
    d = c.data
    d.latent_files = (os.path.join(latents_dir, "latents-image-*.array_record"),
                      os.path.join(latents_dir, "latents-audio-*.array_record"))
    d.latent_stats_dir = latents_dir
    d.image_vae_workdir = d.audio_vae_workdir = ""
    d.prefetch = 0
    if "latent_noise" in d:  # the shards hold one sample per example: use them as stored
        d.latent_noise = "frozen"
    for k, v in data.items():
        d[k] = v
    return c


@pytest.mark.parametrize("seed, cond_drop", [(0, 0.1), (1, 0.5), (2, 0.9)])
def test_pipeline_rows_never_exceed_the_budget(latents, seed, cond_drop):
    c = tiny_config(latents, seed=seed, cond_drop=cond_drop)
    assert "interleaved=1" in c.data.task_weights
    it = build_train_iterator(c, process_index=0, process_count=1)
    seen = {IMAGE: 0, AUDIO: 0}
    for _ in range(4):  # 4 batches × 32 rows
        batch = next(it)
        assert pop_skip_counts(batch) == {}  # no document is refused at this budget
        for m, counts in targets_per_row(batch).items():
            assert counts.max() <= 52
            seen[m] = max(seen[m], int(counts.max()))
        assert_nothing_dropped(c, batch)
    assert seen[IMAGE] >= 32 and seen[AUDIO] >= 25


def test_held_out_rows_and_a_resume_keep_the_budget(latents):
    from latentlm_jax.data.pipeline import build_eval_rows

    c = tiny_config(latents, cond_drop=1.0, task_weights="text_to_image=1,text_to_audio=1")
    c.data.eval_latent_files = c.data.latent_files
    c.data.eval_examples = 64
    rows, doc_ids = build_eval_rows(c)
    for counts in targets_per_row(rows).values():
        assert counts.max() <= 52
    assert doc_ids.max() == 63  # every document kept, in more rows

    # Rows closed by the budget leave a carried document: the iterator state resumes exactly.
    c.train.global_batch_size = 4
    it = build_train_iterator(c, process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    again = build_train_iterator(c, process_index=0, process_count=1)
    again.set_state(state)
    for batch in want:
        got = next(again)
        for k in ("tokens", "latents", "latent_mask", "segment_ids"):
            np.testing.assert_array_equal(got[k], batch[k], err_msg=k)


def dense_image_batch(latents: str, rows: int = 4, budget: bool = True, **data):
    """Rows of caption-dropped text→image documents only: the densest packing there is."""
    import latentlm_jax.data.pipeline as pipeline

    c = tiny_config(latents, task_weights="text_to_image=1", cond_drop=1.0, **data)
    c.data.latent_files = c.data.latent_files[:1]
    c.train.global_batch_size = rows
    saved = pipeline.target_budget
    if not budget:
        pipeline.target_budget = lambda config: None
    try:
        batch = next(build_train_iterator(c, process_index=0, process_count=1))
    finally:
        pipeline.target_budget = saved
    pop_skip_counts(batch)
    return batch


def test_dense_rows_close_at_the_budget(latents):
    # 20-token documents of 16 targets: 6 fit a 128-token row (96 targets), 3 fit 52 slots
    np.testing.assert_array_equal(targets_per_row(dense_image_batch(latents))[IMAGE], 48)
    free = dense_image_batch(latents, budget=False)
    np.testing.assert_array_equal(targets_per_row(free)[IMAGE], 96)


def test_interleaved_documents_stop_at_the_budget():
    tok = make_tokenizer(load_config_file(LATENTLM_TINY).data)
    records = random_records(np.random.default_rng(1), SPANS, DIMS, 40)
    for budget, most in ((None, 3 * 25), ({IMAGE: 40, AUDIO: 30}, None)):
        builder = SequenceBuilder(tok, weights="interleaved=1", max_interleaved=3,
                                  lookup=records.__getitem__, lookup_len=len(records),
                                  pre_encoded=True, cond_drop=0.0, target_budget=budget)
        docs = [builder(i, records[i]) for i in range(40)]
        spans = [len(d.latents) for d in docs]
        if budget is None:  # unbounded, documents take up to 3 spans of one modality
            assert max(max(d.targets().values()) for d in docs) == most
        else:
            for d in docs:
                assert all(k <= budget[m] for m, k in d.targets().items())
            assert max(spans) >= 2  # partners of the other modality are still taken


def test_a_document_over_the_budget_is_a_bad_input(latents):
    """20 slots: an audio span (25 targets) never fits; skipped and counted, or an error."""
    c = tiny_config(latents, seed=4)
    c.model.diffusion.target_fraction = 0.15
    c.train.global_batch_size = 8
    batch = next(build_train_iterator(c, process_index=0, process_count=1))
    skipped = pop_skip_counts(batch)
    assert skipped.get("data/skipped/too_many_targets", 0) > 0
    assert targets_per_row(batch)[AUDIO].max() == 0 and targets_per_row(batch)[IMAGE].max() <= 20
    c.data.bad_input = "error"
    with pytest.raises(DataError, match=r"too_many_targets.*25 audio latent targets; the "
                                        r"diffusion head has 20 slots per row"):
        next(build_train_iterator(c, process_index=0, process_count=1))


# ------------------------------------------------------------------------------ the CLI
class Reached(Exception):
    """Raised by the tripwire in place of training."""


def train_args(latents: str, workdir: str, *overrides: str) -> list[str]:
    return ["train", "--config", LATENTLM_TINY, "--workdir", workdir,
            f"--config.data.latent_files=('{latents}/latents-image-*.array_record', "
            f"'{latents}/latents-audio-*.array_record')",
            f"--config.data.latent_stats_dir={latents}",
            "--config.data.image_vae_workdir=", "--config.data.audio_vae_workdir=",
            *NOISE_OVERRIDE, *overrides]


# The shards hold one sample per example: used as stored (when the pipeline draws σ-VAE noise).
NOISE_OVERRIDE = (("--config.data.latent_noise=frozen",)
                  if "latent_noise" in load_config_file(LATENTLM_TINY).data else ())


def test_a_span_over_the_slots_is_one_line_through_the_cli(latents, tmp_path, capsys,
                                                           monkeypatch):
    def reached(*args, **kwargs):
        raise Reached("training started")

    monkeypatch.setattr(trainer, "train", reached)
    workdir = str(tmp_path / "w")
    code = cli_main.main(train_args(latents, workdir,
                                    "--config.model.diffusion.target_fraction=0.15"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == (
        "latentlm: error: config.model.diffusion.target_fraction: 0.15 gives the diffusion head "
        "20 slots per row, fewer than the 25 targets of one audio span: set it to ≥ 0.188 (or "
        "0: every position)")
    assert not os.path.exists(workdir)
    with pytest.raises(Reached):  # the default fraction passes the check
        cli_main.main(train_args(latents, workdir))


# ------------------------------------------------------------------------------ the loss
def fixed_draws(rng, shape, num_timesteps):
    """t and ε that depend on neither the key nor the position: both layouts draw alike."""
    del rng
    t = jnp.full(shape[:-1], num_timesteps // 3, jnp.int32)
    eps = jnp.broadcast_to(jnp.sin(jnp.arange(shape[-1], dtype=jnp.float32) + 1.0), shape)
    return t, eps


@pytest.mark.slow
def test_the_budgeted_loss_equals_the_every_position_loss(latents, monkeypatch):
    from latentlm_jax.diffusion import loss as diffusion_module
    from latentlm_jax.lm.loss import latentlm_loss
    from latentlm_jax.models.latentlm import LatentLM

    monkeypatch.setattr(diffusion_module, "draw_timesteps_and_noise", fixed_draws)
    c = tiny_config(latents, seed=3, cond_drop=0.5)
    c.train.global_batch_size = 4
    mixed = next(build_train_iterator(c, process_index=0, process_count=1))
    pop_skip_counts(mixed)
    dense = dense_image_batch(latents)

    m = c.model
    for k, v in TINY_MODEL.items():
        m[k] = v
    m.num_layers, m.head.depth = 1, 1  # the smallest model that has a head
    model = LatentLM(m, rngs=nnx.Rngs(0))
    # A zero-initialised head output would make the loss ignore the gathered conditions.
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)]))

    loss = nnx.jit(lambda model, batch: latentlm_loss(model, batch, jax.random.key(0)))

    def run(batch, fraction):
        model.diffusion = model.diffusion._replace(target_fraction=fraction)
        return loss(model, batch)

    f = m.diffusion.target_fraction  # the config's 0.4: the budget the rows were packed to
    for batch in (mixed, dense):
        total_full, full = run(batch, 0.0)
        total_gathered, gathered = run(batch, f)
        for name in ("image", "audio"):
            assert int(gathered[f"{name}_latents_dropped"]) == 0
            assert int(gathered[f"{name}_latents"]) == int(full[f"{name}_latents"])
            np.testing.assert_allclose(gathered[f"diff/{name}"], full[f"diff/{name}"],
                                       rtol=2e-5)
        np.testing.assert_allclose(total_gathered, total_full, rtol=2e-5)
    assert int(full["image_latents"]) == 4 * 48  # the dense batch: every row at its budget

    # Rows packed without the budget: the same slots drop targets, and the loss differs.
    free = dense_image_batch(latents, budget=False)
    _, full = run(free, 0.0)
    _, small = run(free, f)
    assert int(small["image_latents_dropped"]) == 4 * (96 - 52)
    assert not math.isclose(float(small["diff/image"]), float(full["diff/image"]), rel_tol=1e-4)
