"""The Grain pipeline: determinism, resume, process sharding, bad inputs, task layouts."""

from __future__ import annotations

import json

import grain
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from latentlm_jax.config.base import base_config
from latentlm_jax.config.task_weights import TASKS, parse_task_weights
from latentlm_jax.data.bad_input import SKIP_COUNTS_KEY, DataError, pop_skip_counts
from latentlm_jax.data.packing import LATENT_KEYS, TEXT_KEYS
from latentlm_jax.data.pipeline import (
    build_document_dataset,
    build_train_iterator,
)
from latentlm_jax.data.sequences import SequenceBuilder, to_example
from latentlm_jax.data.shapes_tones import ShapesTones
from latentlm_jax.data.sources import CaptionSource
from latentlm_jax.data.tokenizer import ByteTokenizer
from latentlm_jax.modality import AUDIO, IMAGE
from tests.helpers import text_config

TOK = ByteTokenizer()


def write_lines(path, n, *, extra=()):
    lines = [f"document {i}: " + "abcdefghij"[: i % 10] * (i % 4) for i in range(n)]
    path.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")
    return lines


def take(it, n):
    out = [next(it) for _ in range(n)]
    for b in out:
        b.pop(SKIP_COUNTS_KEY, None)
    return out


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def documents(config, n, **kw):
    ds = build_document_dataset(config, **kw)
    return [ds[i] for i in range(n)]


# ---------------------------------------------------------------------------- text pipeline
def test_batches_have_the_batch_format(tmp_path):
    write_lines(tmp_path / "a.txt", 40)
    c = text_config(tmp_path / "a.txt")
    it = build_train_iterator(c, process_index=0, process_count=1)
    batch = next(it)
    assert pop_skip_counts(batch) == {}
    assert set(batch) == set(TEXT_KEYS)
    for k in TEXT_KEYS:
        assert batch[k].shape == (4, 64), k
    assert batch["ce_mask"].dtype == bool and batch["tokens"].dtype == np.int32
    it.close()


def test_determinism_and_seed(tmp_path):
    write_lines(tmp_path / "a.txt", 60)
    c = text_config(tmp_path / "a.txt")
    a = take(build_train_iterator(c, process_index=0, process_count=1), 4)
    b = take(build_train_iterator(c, process_index=0, process_count=1), 4)
    assert_batches_equal(a, b)
    c.data.seed = 1
    other = take(build_train_iterator(c, process_index=0, process_count=1), 4)
    assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, other, strict=True))


def test_rows_hold_the_document_stream_in_order(tmp_path):
    write_lines(tmp_path / "a.txt", 30)
    c = text_config(tmp_path / "a.txt", prefetch=0)
    batches = take(build_train_iterator(c, process_index=0, process_count=1), 6)
    packed = []
    for b in batches:
        for r in range(b["tokens"].shape[0]):
            seg = b["segment_ids"][r]
            packed += [b["tokens"][r][seg == s].tolist() for s in range(1, seg.max() + 1)]
    docs = documents(c, len(packed), process_index=0, process_count=1)
    assert packed == [d.tokens.tolist() for d in docs]
    assert TOK.decode(packed[0]) in (tmp_path / "a.txt").read_text()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_state_save_restore(tmp_path, prefetch):
    write_lines(tmp_path / "a.txt", 50)
    c = text_config(tmp_path / "a.txt", prefetch=prefetch)
    it = build_train_iterator(c, process_index=0, process_count=1)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable
    expected = take(it, 4)
    fresh = build_train_iterator(c, process_index=0, process_count=1)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), expected)
    it.set_state(state)  # rewinding the same iterator works too
    assert_batches_equal(take(it, 4), expected)


def test_orbax_checkpoint_handlers(tmp_path):
    """grain.checkpoint.CheckpointSave/Restore and the trainer's DataSave/DataRestore."""
    import orbax.checkpoint as ocp

    from latentlm_jax.train.data_checkpoint import DataRestore, DataSave

    write_lines(tmp_path / "a.txt", 50)
    c = text_config(tmp_path / "a.txt")
    for name, save, restore in [("grain", grain.checkpoint.CheckpointSave,
                                 grain.checkpoint.CheckpointRestore),
                                ("ours", DataSave, DataRestore)]:
        it = build_train_iterator(c, process_index=0, process_count=1)
        take(it, 3)
        with ocp.CheckpointManager(tmp_path / f"ckpt_{name}", item_names=("data",)) as mgr:
            mgr.save(3, args=ocp.args.Composite(data=save(it)))
            mgr.wait_until_finished()
            expected = take(it, 3)
            fresh = build_train_iterator(c, process_index=0, process_count=1)
            mgr.restore(3, args=ocp.args.Composite(data=restore(fresh)))
        assert_batches_equal(take(fresh, 3), expected)


def test_process_shards_partition_the_document_stream(tmp_path):
    """Invariant: document k of process p (of P) is document k·P + p of the one-process stream.

    Packing is per process, so rows cannot be compared across process counts; what must hold
    for data parallelism is that every document of the global stream goes to exactly one
    process and that the global stream does not depend on the process count. Comparing the
    document streams (tokens and origin) checks exactly that; in one epoch the shards are then
    disjoint and cover the source.
    """
    n = 50
    write_lines(tmp_path / "a.txt", n)
    c = text_config(tmp_path / "a.txt")
    single = documents(c, 2 * n, process_index=0, process_count=1)
    shards = [documents(c, n, process_index=p, process_count=2) for p in (0, 1)]
    for p, shard in enumerate(shards):
        for k, doc in enumerate(shard):
            ref = single[2 * k + p]
            assert doc.source == ref.source
            np.testing.assert_array_equal(doc.tokens, ref.tokens)
    first_epoch = [{d.source for d in shard[: n // 2]} for shard in shards]
    assert not first_epoch[0] & first_epoch[1]
    assert len(first_epoch[0] | first_epoch[1]) == n
    # the second epoch is a different permutation
    assert [d.source for d in single[:n]] != [d.source for d in single[n:]]
    # each process gets global_batch / process_count rows
    b = next(build_train_iterator(c, process_index=1, process_count=2))
    assert b["tokens"].shape == (2, 64)
    with pytest.raises(ValueError, match="divisible"):
        build_train_iterator(c, process_index=0, process_count=3)


def test_bad_inputs_skip_and_error(tmp_path):
    path = tmp_path / "a.txt"
    write_lines(path, 20)
    with open(path, "ab") as f:
        f.write(b"bad \xff utf-8\n" + b"y" * 200 + b"\n")  # invalid; longer than seq_len 64
    c = text_config(path, shuffle=False, prefetch=0)
    it = build_train_iterator(c, process_index=0, process_count=1)
    totals: dict[str, int] = {}
    for _ in range(8):  # more than one epoch
        for k, v in pop_skip_counts(next(it)).items():
            totals[k] = totals.get(k, 0) + v
    assert totals["data/skipped/invalid_utf8"] >= 1 and totals["data/skipped/too_long"] >= 1
    c.data.bad_input = "error"
    it = build_train_iterator(c, process_index=0, process_count=1)
    with pytest.raises(DataError, match="invalid_utf8"):
        take(it, 8)


def test_to_global_batch(tmp_path):
    """The trainer's host rows → global arrays: sharded by the task's batch shardings, with the
    skip counts taken out (and totalled) on the way."""
    from latentlm_jax.data.bad_input import SkipTotals
    from latentlm_jax.train.trainer import to_global_batch

    write_lines(tmp_path / "a.txt", 20)
    c = text_config(tmp_path / "a.txt")
    c.train.global_batch_size = 8
    local = next(build_train_iterator(c, process_index=0, process_count=1))
    local["latents"] = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8, 64, 3)
    mesh = jax.make_mesh((8,), ("data",))
    shardings = {k: NamedSharding(mesh, PartitionSpec("data", *([None] * (v.ndim - 1))))
                 for k, v in local.items() if isinstance(v, np.ndarray)}
    out = to_global_batch(local, shardings, SkipTotals())
    assert SKIP_COUNTS_KEY not in out and set(out) == set(shardings)
    for k, v in out.items():
        assert v.shape == local[k].shape
        np.testing.assert_array_equal(np.asarray(v), local[k])
        assert v.sharding.spec[0] == "data"
        assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 1


# ---------------------------------------------------------------------------- sequences
def fake_example(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "image_caption": f"a small red circle in the center {i}",
        "image_attrs": {},
        "audio": rng.uniform(-0.5, 0.5, 16000).astype(np.float32),
        "audio_caption": f"notes C4 D{i % 9}",
        "audio_pitches": ("C4",),
        "source": f"fake:{i}",
    }


def encode_image(image: np.ndarray) -> np.ndarray:
    """8×8 average pooling: [32, 32, 3] -> [16, 3]."""
    return image.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3)).reshape(16, 3) / 255.0


def encode_audio(audio: np.ndarray) -> np.ndarray:
    """1000-sample frames: [16000] -> [16, 2] (mean, max |x|)."""
    frames = audio.reshape(16, 1000)
    return np.stack([frames.mean(1), np.abs(frames).max(1)], axis=1)


def builder(task, **kw):
    kw.setdefault("cond_drop", 0.0)
    return SequenceBuilder(TOK, weights={task: 1.0}, encode_image=encode_image,
                           encode_audio=encode_audio, lookup=fake_example, lookup_len=1000, **kw)


def test_text_to_image_layout():
    ex = fake_example(3)
    doc = builder("text_to_image")(0, ex)
    cap = TOK.encode(ex["image_caption"])
    n = 16
    assert doc.tokens.tolist() == [1, *cap, 3, *[7] * n, 4, 2]
    assert doc.modalities == (IMAGE,)
    np.testing.assert_allclose(doc.latents[0], encode_image(ex["image"]))
    # packed: exactly N latent positions between <boi> and <eoi>; latent_mask before each
    from latentlm_jax.data.packing import pack_documents

    b = pack_documents([doc], 64, latent_id=7, latent_dim=3)
    tok = b["tokens"][0]
    boi, eoi = int(np.flatnonzero(tok == 3)[0]), int(np.flatnonzero(tok == 4)[0])
    assert eoi - boi - 1 == n
    assert np.flatnonzero(b["modality"][0] == IMAGE).tolist() == list(range(boi + 1, eoi))
    assert np.flatnonzero(b["latent_mask"][0]).tolist() == list(range(boi, eoi - 1))
    np.testing.assert_allclose(b["latents"][0][boi + 1: eoi], doc.latents[0])


def test_task_layouts():
    ex = fake_example(5)
    icap, acap = TOK.encode(ex["image_caption"]), TOK.encode(ex["audio_caption"])
    lat = [7] * 16
    assert builder("image_to_text")(0, ex).tokens.tolist() == [1, 3, *lat, 4, *icap, 2]
    assert builder("text_to_audio")(0, ex).tokens.tolist() == [1, *acap, 5, *lat, 6, 2]
    doc = builder("audio_to_text")(0, ex)
    assert doc.tokens.tolist() == [1, 5, *lat, 6, *acap, 2] and doc.modalities == (AUDIO,)
    np.testing.assert_allclose(doc.latents[0], encode_audio(ex["audio"]))
    text = builder("text")(0, ex).tokens.tolist()
    assert text in ([1, *icap, 2], [1, *acap, 2])
    # condition dropped (classifier-free guidance): the sampler's unconditional layout
    assert builder("text_to_image", cond_drop=1.0)(0, ex).tokens.tolist() == [1, 3, *lat, 4, 2]


def test_interleaved_layout():
    doc = builder("interleaved", max_interleaved=4)(11, fake_example(11))
    t = doc.tokens.tolist()
    assert t[0] == 1 and t[-1] == 2
    assert 2 <= len(doc.latents) <= 4 and len(doc.modalities) == len(doc.latents)
    opens = [i for i, x in enumerate(t) if x in (3, 5)]
    assert len(opens) == len(doc.latents)
    for start, z, mod in zip(opens, doc.latents, doc.modalities, strict=True):
        assert t[start] == (3 if mod == IMAGE else 5)
        end = start + 1 + len(z)
        assert t[start + 1: end] == [7] * len(z) and t[end] == (4 if mod == IMAGE else 6)
        assert t[start - 1] >= 8  # each span follows its caption


def test_interleaved_stops_before_max_len():
    sizes = []
    for i in range(30):
        doc = builder("interleaved", max_interleaved=4, max_len=90)(i, fake_example(i))
        assert len(doc) <= 90 or len(doc.latents) == 1
        sizes.append(len(doc.latents))
    unlimited = [len(builder("interleaved", max_interleaved=4)(i, fake_example(i)).latents)
                 for i in range(30)]
    assert max(sizes) < max(unlimited) and min(sizes) >= 1


def test_text_task_does_no_latent_work():
    def boom(_):
        raise AssertionError("encoder called for a text-only document")

    b = SequenceBuilder(TOK, weights={"text": 1.0}, encode_image=boom, encode_audio=boom)
    for i in range(20):
        assert not b(i, fake_example(i)).latents


def test_task_mix_follows_weights():
    b = SequenceBuilder(TOK, weights="text=3,image_to_text=1", encode_image=encode_image)
    counts = {t: 0 for t in TASKS}
    for i in range(800):
        counts[b.choose(to_example(fake_example(i)), np.random.default_rng((0, i)))] += 1
    assert counts["text"] + counts["image_to_text"] == 800
    assert 0.68 < counts["text"] / 800 < 0.82
    # defaults drop the tasks whose encoder is missing; explicit requests fail loudly
    only_audio = SequenceBuilder(TOK, encode_audio=encode_audio)
    assert only_audio.weights["text_to_image"] == 0 and only_audio.weights["text_to_audio"] > 0
    with pytest.raises(ValueError, match="encoder"):
        SequenceBuilder(TOK, weights="text_to_image=1")
    with pytest.raises(ValueError, match="unknown task"):
        parse_task_weights("text_to_video=1")


def test_manifest_source_through_the_task_builder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    lines = [json.dumps({"text": f"picture {i}", "image": f"{i}.png"}) for i in range(3)]
    lines += [json.dumps({"text": "just words"}), json.dumps({"image": "0.png"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = base_config()
    c.data.source, c.data.manifest, c.data.seq_len = "manifest", str(tmp_path / "m.jsonl"), 64
    c.data.prefetch = 0
    # text-only model: only text documents; the image-only line has no task and is skipped
    it = build_train_iterator(c, process_index=0, process_count=1)
    counts = {}
    for _ in range(4):
        b = next(it)
        for k, v in pop_skip_counts(b).items():
            counts[k] = counts.get(k, 0) + v
        assert set(b) == set(TEXT_KEYS)
        assert not np.isin(b["tokens"], [3, 4, 5, 6, 7]).any()
    assert counts.get("data/skipped/no_task", 0) >= 1
    # image model: image tasks appear, with the encoder's latents
    c.model.image_latent_dim = 3
    with pytest.raises(ValueError, match="encode_image"):
        build_train_iterator(c, process_index=0, process_count=1)
    b = next(build_train_iterator(c, process_index=0, process_count=1,
                                  encode_image=encode_image))
    assert (b["modality"] == IMAGE).any() and not (b["modality"] == AUDIO).any()
    assert b["latents"].shape == (8, 64, 3)


# ---------------------------------------------------------------------------- built-in data
def test_caption_source_pipeline():
    src, ds = CaptionSource("train"), ShapesTones("train")
    for i in (0, 7, 123):
        assert src[2 * i]["text"] == ds[i]["image_caption"]
        assert src[2 * i + 1]["text"] == ds[i]["audio_caption"]
    assert len(src) == 2 * len(ds)
    c = base_config()  # data.source = shapes_tones_captions
    it = build_train_iterator(c, process_index=0, process_count=1)
    a = take(it, 2)
    assert set(a[0]) == set(TEXT_KEYS)
    text = TOK.decode(a[0]["tokens"][0][a[0]["segment_ids"][0] == 1])
    assert text.startswith("a ") or text.startswith("notes ")
    it.close()


def test_multimodal_pipeline_shapes_tones():
    c = base_config()
    c.data.source = "shapes_tones"
    c.data.seq_len = 96
    c.model.image_latent_dim, c.model.audio_latent_dim = 3, 2
    it = build_train_iterator(c, process_index=0, process_count=1, encode_image=encode_image,
                              encode_audio=encode_audio)
    batches = take(it, 3)
    b = batches[0]
    assert set(b) == set(TEXT_KEYS + LATENT_KEYS)
    assert b["latents"].shape == (8, 96, 3)
    seen = np.concatenate([x["modality"].ravel() for x in batches])
    assert {0, IMAGE, AUDIO} <= set(seen.tolist())
    # audio latents use the first 2 of the 3 dims
    for x in batches:
        assert not x["latents"][x["modality"] == AUDIO][:, 2].any()
    state = it.get_state()
    expected = take(it, 2)
    fresh = build_train_iterator(c, process_index=0, process_count=1, encode_image=encode_image,
                                 encode_audio=encode_audio)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), expected)


@pytest.mark.parametrize("weights", ["", "text_to_image=1,audio_to_text=1"])
def test_pre_encoded_latents_need_no_encoder(tmp_path, weights):
    """data.source="latents": records carry their latents, so media tasks are built from them
    (regression: they used to be zero-weighted or rejected for lack of an encoder)."""
    from latentlm_jax.data.array_record_source import write_latents

    rng = np.random.default_rng(0)
    image = tmp_path / "img.array_record"
    audio = tmp_path / "aud.array_record"
    write_latents(str(image), [{"latents": rng.normal(size=(4, 3)).astype(np.float32),
                                "caption": f"shape {i}", "modality": "image"} for i in range(8)])
    write_latents(str(audio), [{"latents": rng.normal(size=(5, 6)).astype(np.float32),
                                "caption": f"notes {i}", "modality": "audio"} for i in range(8)])
    c = base_config()
    c.model.image_latent_dim, c.model.audio_latent_dim = 3, 6
    c.data.source, c.data.latent_files, c.data.seq_len = "latents", (str(image), str(audio)), 64
    c.data.task_weights = weights
    c.train.global_batch_size = 4
    batch = next(build_train_iterator(c, process_index=0, process_count=1))
    assert (batch["modality"] == 1).sum() > 0 and (batch["modality"] == 2).sum() > 0
    assert batch["latent_mask"].sum() > 0
    assert batch["latents"].shape == (4, 64, 6)
