"""Held-out evaluation of the LM task (latentlm_jax/lm/evaluate.py, docs/evaluation.md): the
numbers against the training loss with the same draws, determinism, batch-size invariance, the
metrics a training run writes, and the config errors."""

from __future__ import annotations

import copy
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.data.pipeline import build_eval_rows, eval_data_config
from latentlm_jax.lm.task import LMTask
from tests.helpers import read_metrics, text_config, tiny_lm_config, tiny_model

TEXT_KEYS = {"loss", "text_ce", "text_bits_per_token"}


def _perturbed(model: nnx.Module, seed: int = 1) -> nnx.Module:
    """Random nonzero weights everywhere (the diffusion heads' output starts at zero)."""
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(
        lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(np.float32), state))
    return model


def _latent_config(tmp_path, **train):
    from latentlm_jax.data.array_record_source import write_latents

    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 16), ("test", 6)):
        image = tmp_path / f"img-{split}.array_record"
        audio = tmp_path / f"aud-{split}.array_record"
        write_latents(str(image), [{"latents": rng.normal(size=(4, 3)).astype(np.float32),
                                    "caption": f"{split} shape {i}", "modality": "image"}
                                   for i in range(n)])
        write_latents(str(audio), [{"latents": rng.normal(size=(5, 6)).astype(np.float32),
                                    "caption": f"{split} notes {i}", "modality": "audio"}
                                   for i in range(n)])
        files[split] = (str(image), str(audio))
    c = base_config()
    tiny_model(c.model, image_latent_dim=3, audio_latent_dim=6)
    c.model.diffusion.batch_mul = 3
    c.model.diffusion.loss_weight = 0.5
    c.data.source, c.data.seq_len = "latents", 48
    c.data.latent_files, c.data.eval_latent_files = files["train"], files["test"]
    c.data.eval_draws = 3
    c.train.global_batch_size = 4
    c.train.eval_every = 1
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """(config, model with random nonzero weights) of a tiny LatentLM on latent shards."""
    c = _latent_config(tmp_path_factory.mktemp("latents"))
    return c, _perturbed(LMTask(c).build_model(c, nnx.Rngs(0)))


def test_text_eval_equals_hand_cross_entropy():
    c = tiny_lm_config()
    c.data.seq_len = 96  # every caption fits
    c.data.eval_examples = 12
    c.train.eval_every = 5
    task = LMTask(c)
    model = task.build_model(c, nnx.Rngs(0))
    got = task.evaluate(model, c, "", 5)
    assert set(got) == TEXT_KEYS
    rows, doc_ids = build_eval_rows(c)
    assert doc_ids.max() + 1 == 12 and (doc_ids[rows["segment_ids"] == 0] == -1).all()
    logits = np.asarray(model(jnp.asarray(rows["tokens"]), jnp.asarray(rows["positions"]),
                              jnp.asarray(rows["segment_ids"])), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, rows["targets"][..., None], -1)[..., 0]
    ce = nll[rows["ce_mask"]].mean()
    assert got["text_ce"] == pytest.approx(ce, rel=1e-5)
    assert got["text_bits_per_token"] == pytest.approx(ce / math.log(2), rel=1e-5)
    assert got["loss"] == got["text_ce"]


def test_builtin_eval_reads_the_test_split():
    c = tiny_lm_config()
    assert eval_data_config(c).data.split == "test"
    c.data.eval_split = "validation"
    assert eval_data_config(c).data.split == "validation"
    assert c.data.split == "train"  # the run's own config is left alone


def test_latentlm_eval_equals_training_loss_with_the_same_draws(latent_run, monkeypatch):
    """eval/loss, text CE and each modality's diffusion term equal ``latentlm_loss`` on the
    same rows when its (t, ε) draws are the eval's fixed ones."""
    import latentlm_jax.diffusion.loss as dloss
    from latentlm_jax.diffusion.schedules import make_schedule
    from latentlm_jax.lm.evaluate import EVAL_KEY, eval_draws
    from latentlm_jax.lm.loss import latentlm_loss

    c, model = latent_run
    got = LMTask(c).evaluate(model, c, "", 1)
    assert set(got) == TEXT_KEYS | {"diffusion/image", "diffusion/audio"}

    rows, doc_ids = build_eval_rows(c)
    assert doc_ids.max() + 1 == 12  # the 6 + 6 held-out records, not the 32 training ones
    text = bytes(int(t) - 8 for t in rows["tokens"].ravel() if t >= 8)
    assert b"test " in text and b"train" not in text
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    T = make_schedule(c.model.diffusion.schedule).num_timesteps
    draw = jax.jit(eval_draws, static_argnums=(1, 4, 5, 6))
    draws = [draw(jax.random.key(EVAL_KEY), m, jnp.asarray(doc_ids), batch["positions"], 3, T,
                  dim) for m, dim in model.dims.items()]

    def fixed(rng, shape, num_timesteps):
        t, eps = draws.pop(0)
        assert eps.shape == shape and num_timesteps == T
        return t, eps

    monkeypatch.setattr(dloss, "draw_timesteps_and_noise", fixed)
    loss, metrics = nnx.jit(latentlm_loss)(model, batch, jax.random.key(0))  # traced once
    assert not draws
    assert metrics["image_latents"] > 0 and metrics["audio_latents"] > 0
    assert got["text_ce"] == pytest.approx(float(metrics["ce"]), rel=1e-5)
    assert got["diffusion/image"] == pytest.approx(float(metrics["diff/image"]), rel=1e-5)
    assert got["diffusion/audio"] == pytest.approx(float(metrics["diff/audio"]), rel=1e-5)
    assert got["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert got["diffusion/image"] > 0.01


def test_eval_draws_are_stratified_and_fixed():
    from latentlm_jax.lm.evaluate import eval_draws

    docs = jnp.array([[0, 0, 1, 1, -1]])
    pos = jnp.array([[0, 1, 0, 1, 0]])
    draw = jax.jit(eval_draws, static_argnums=(1, 4, 5, 6))
    t, eps = draw(jax.random.key(0), 1, docs, pos, 4, 1000, 2)
    assert t.shape == (1, 4, 5) and eps.shape == (1, 4, 5, 2)
    for k in range(4):  # draw k's timestep lies in the k-th quarter of [0, T)
        assert ((t[0, k] >= 250 * k) & (t[0, k] < 250 * (k + 1))).all()
    # keyed by (document, position): the same document elsewhere in a row gets the same draws
    t2, eps2 = draw(jax.random.key(0), 1, docs[:, ::-1], pos[:, ::-1], 4, 1000, 2)
    np.testing.assert_array_equal(t2[0, :, 1:], t[0, :, :-1][:, ::-1])
    np.testing.assert_array_equal(eps2[0, :, 1:], eps[0, :, :-1][:, ::-1])


def test_eval_is_deterministic_and_independent_of_the_batch_size(latent_run):
    c, model = latent_run
    c = copy.deepcopy(c)
    task = LMTask(c)
    first = task.evaluate(model, c, "", 1)
    assert task.evaluate(model, c, "", 2) == first  # the cached rows, the compiled step
    assert LMTask(c).evaluate(model, c, "", 1) == first  # rows rebuilt from the config
    c.train.global_batch_size = 2  # other chunks and padding: the same documents and draws
    other = LMTask(c).evaluate(model, c, "", 1)
    assert other == pytest.approx(first, rel=1e-5)


@pytest.mark.slow
@pytest.mark.multidevice
def test_training_run_writes_eval_metrics_and_a_restore_reproduces_them(tmp_path):
    """A run with eval_every writes the eval/ keys; the saved checkpoint, restored, evaluates
    to the same numbers (data × fsdp mesh: eval batches sharded like train batches)."""
    from latentlm_jax.train.checkpoint_io import load_model
    from latentlm_jax.train.trainer import train

    c = tiny_lm_config(data=2, fsdp=2)
    c.train.num_steps, c.train.eval_every, c.checkpoint.every_steps = 4, 2, 4
    c.data.seq_len, c.data.eval_examples = 64, 16
    c.checkpoint.async_save = False
    devices = jax.devices()[:4]
    train(c, str(tmp_path), devices=devices)
    evals = {r["step"]: r for r in read_metrics(tmp_path) if "eval/loss" in r}
    assert sorted(evals) == [2, 4]
    for row in evals.values():
        assert {"eval/loss", "eval/text_ce", "eval/text_bits_per_token"} <= set(row)
        assert row["eval/text_bits_per_token"] == pytest.approx(
            row["eval/text_ce"] / math.log(2))
    assert evals[4]["eval/loss"] < evals[2]["eval/loss"]
    model, config, step = load_model(str(tmp_path), use_ema=False, config=c)
    assert step == 4
    again = LMTask(config).evaluate(model, config, "", step)
    assert again["loss"] == pytest.approx(evals[4]["eval/loss"], rel=1e-6)


def test_config_errors(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello\nworld\n")
    c = text_config(text)
    c.train.eval_every = 10
    with pytest.raises(ConfigError, match=r"data\.eval_text_files: train.eval_every=10"):
        validate(c)
    c.data.eval_text_files = (str(text),)
    validate(c)
    c.data.eval_split = "test"
    with pytest.raises(ConfigError, match=r"data\.eval_split: names a split"):
        validate(c)

    c = base_config()
    c.data.source, c.data.latent_files = "latents", ("x.array_record",)
    c.train.eval_every = 1
    with pytest.raises(ConfigError, match=r"data\.eval_latent_files: .* or data\.eval_latents_dir"):
        validate(c)
    c.data.source, c.data.manifest = "manifest", "m.jsonl"
    with pytest.raises(ConfigError, match=r"data\.eval_manifest"):
        validate(c)
    c.data.source, c.data.tfds_name, c.data.eval_split = "tfds", "mnist", "train"
    with pytest.raises(ConfigError, match=r"data\.eval_split: 'train' is the training split"):
        validate(c)

    c = base_config()  # the built-in data: its test split, unless that is what trains
    c.train.eval_every = 1
    validate(c)
    c.data.split = "test"
    with pytest.raises(ConfigError, match=r"data\.eval_split: 'test' is the training split"):
        validate(c)
    c.train.eval_every = 0  # no eval, nothing to hold out
    validate(c)
    c.data.eval_examples = 0
    with pytest.raises(ConfigError, match=r"data\.eval_examples: must be positive"):
        validate(c)


def test_text_files_eval_reads_eval_text_files(tmp_path):
    train_file, eval_file = tmp_path / "train.txt", tmp_path / "eval.txt"
    train_file.write_text("".join(f"train line {i}\n" for i in range(20)))
    eval_file.write_text("held out one\nheld out two\nheld out three\n")
    c = text_config(train_file, eval_text_files=(str(eval_file),))
    tiny_model(c.model)
    c.train.eval_every = 1
    rows, doc_ids = build_eval_rows(c)
    assert doc_ids.max() + 1 == 3  # fewer documents than eval_examples: all of them, once
    text = bytes(int(t) - 8 for t in rows["tokens"].ravel() if t >= 8)
    assert b"held out" in text and b"train line" not in text


def test_eval_latents_dir_and_a_missing_held_out_file(latent_run, tmp_path):
    from latentlm_jax.data.latents_dir import update_descriptor

    c, _ = latent_run
    c = copy.deepcopy(c)
    folder = tmp_path / "latents_test"
    folder.mkdir()
    for name, dim, path in (("image", 3, c.data.eval_latent_files[0]),
                            ("audio", 6, c.data.eval_latent_files[1])):
        (folder / f"{name}.array_record").write_bytes(pathlib.Path(path).read_bytes())
        update_descriptor(str(folder), name, {"shards": [f"{name}.array_record"],
                                              "latent_dim": dim})
    rows, doc_ids = build_eval_rows(c)
    c.data.eval_latent_files, c.data.eval_latents_dir = (), str(folder)
    rows_dir, doc_ids_dir = build_eval_rows(c)
    np.testing.assert_array_equal(doc_ids_dir, doc_ids)
    np.testing.assert_array_equal(rows_dir["latents"], rows["latents"])
    c.model.audio_latent_dim = 5
    with pytest.raises(ConfigError, match=r"data\.eval_latents_dir: .* no audio latents of dim 5"):
        build_eval_rows(c)

    t = text_config(tmp_path / "missing.txt", eval_text_files=(str(tmp_path / "nope.txt"),))
    t.train.eval_every = 1
    with pytest.raises(ConfigError, match=r"data\.eval_text_files: cannot open"):
        build_eval_rows(t)
