"""Class-conditional generation as in the authors' ImageNet code: the class ids of the built-in
data, labels through the sources and `latentlm encode`, the `[<class k>] z₁ … z_N` documents and
their null-class rate, the label embedding, generation by class id with guidance, bad labels, and
the configs (the ImageNet sizes against the authors' parameter counts)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError, load_config_file
from latentlm_jax.config.validate import validate
from latentlm_jax.data.array_record_source import LatentArrayRecordSource, write_latents
from latentlm_jax.data.bad_input import BadInput, BadInputPolicy, DataError
from latentlm_jax.data.class_sequences import ClassSequenceBuilder
from latentlm_jax.data.packing import document_fields
from latentlm_jax.data.shapes_tones import (
    NUM_CLASSES,
    ShapesTones,
    all_combinations,
    class_attributes,
    class_id,
)
from latentlm_jax.data.tokenizer import ByteTokenizer
from latentlm_jax.generate.class_prompts import (
    check_class_ids,
    class_prompt_rows,
    class_to_latents,
    parse_class_ids,
)
from latentlm_jax.generate.generator import Generator, SamplingOptions
from latentlm_jax.modality import IMAGE
from latentlm_jax.models.latentlm import LatentLM
from tests.helpers import config_path, tiny_model

TOK = ByteTokenizer()
V = base_config().model.vocab_size
N, D, CLASSES = 4, 3, 5


def record(label, n=N, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return {"latents": z, "caption": "", "modality": "image", "label": label, "source": "t"}


def builder(cond_drop=0.1, policy=None, classes=CLASSES):
    return ClassSequenceBuilder(TOK, vocab_size=V, num_classes=classes, cond_drop=cond_drop,
                                seed=3, policy=policy, pre_encoded=True)


# ---------------------------------------------------------------------------- built-in classes
def test_builtin_class_ids_cover_the_180_combinations_and_ride_on_examples():
    assert NUM_CLASSES == 180 == len({class_id(c) for c in all_combinations()})
    for k in (0, 37, 179):
        assert class_id(class_attributes(k)) == k
    ds = ShapesTones("test")
    for i in range(5):
        assert ds[i]["label"] == class_id(ds[i]["image_attrs"])


# ---------------------------------------------------------------------------- documents
def test_document_is_class_then_latents_and_each_position_predicts_the_next_latent():
    doc = builder(cond_drop=0.0)(0, record(2))
    assert doc.tokens.tolist() == [V + 2] + [TOK.latent_id] * N  # no <bos>, <boi>, <eoi>, text
    f = document_fields(doc, TOK.latent_id, D)
    # the class position predicts z₁, z_{N-1}'s predicts z_N, z_N's predicts nothing
    assert f["latent_mask"].tolist() == [True] * N + [False]
    assert (f["latent_modality"][:N] == IMAGE).all()
    assert not f["ce_mask"].any()  # no text target at all, as the authors' loss
    np.testing.assert_array_equal(f["latents"][1:], record(2)["latents"])


def test_null_class_rate_is_cond_drop_and_deterministic_per_index():
    b = builder(cond_drop=0.25)
    first = [int(b(i, record(1)).tokens[0]) for i in range(2000)]
    assert set(first) == {V + 1, V + CLASSES}
    assert abs(first.count(V + CLASSES) / 2000 - 0.25) < 0.03
    assert first == [int(b(i, record(1)).tokens[0]) for i in range(2000)]


@pytest.mark.parametrize("label", [-1, CLASSES, 2.0, "1", True, None])
def test_bad_labels_are_bad_input(label):
    with pytest.raises(BadInput) as e:
        builder()(0, record(label))
    assert e.value.reason == "bad_field"
    policy = BadInputPolicy("skip")
    assert builder(policy=policy)(0, record(label)) is None
    assert policy.counts() == {"data/skipped/bad_field": 1}
    with pytest.raises(DataError):
        builder(policy=BadInputPolicy("error"))(0, record(label))


def test_pipeline_packs_class_documents_from_labelled_latent_shards(tmp_path):
    from latentlm_jax.data.pipeline import build_train_iterator

    shard = str(tmp_path / "latents-image-00000-of-00001.array_record")
    write_latents(shard, (dict(record(k % CLASSES, seed=k), index=k) for k in range(12)))
    c = base_config()
    c.model.image_latent_dim, c.model.num_classes = D, CLASSES
    c.data.source, c.data.latent_files, c.data.label = "latents", (shard,), "label"
    c.data.seq_len, c.data.cond_drop, c.train.global_batch_size = 2 * (N + 1), 0.0, 2
    validate(c)
    batch = next(build_train_iterator(c, process_index=0, process_count=1))
    starts = batch["positions"] == 0
    assert starts.sum() == 4 and (batch["tokens"][starts] >= V).all()
    assert (batch["tokens"][~starts] == TOK.latent_id).all()
    assert batch["latent_mask"].sum() == 4 * N


# ---------------------------------------------------------------------------- labels in sources
def test_manifest_label_field_and_encode_carries_labels(tmp_path):
    from PIL import Image

    from latentlm_jax.data.encode_latents import MediaExamples, encode_dataset
    from latentlm_jax.data.manifest import ManifestSource

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "cls": 7}, {"image": "a.png", "cls": -1},
             {"image": "a.png"}, {"image": "a.png", "cls": 2}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    src = ManifestSource(str(tmp_path / "m.jsonl"), image_resolution=8, sample_rate=16000,
                         num_samples=0, only="image", label="cls")
    assert src[0]["label"] == 7
    for bad in (1, 2):
        with pytest.raises(BadInput, match="class label"):
            src[bad]

    class Identity(nnx.Module):  # a stand-in σ-VAE: μ = 4×4 pooled pixels
        def mode(self, x):
            b, h, w, c = x.shape
            return x.reshape(b, 4, h // 4, 4, w // 4, c).mean((2, 4))

        def posterior(self, x):
            return type("Posterior", (), {"mean": self.mode(x), "logvar": None})

        def sample_latent(self, mu, key, logvar=None):
            return mu

    out = str(tmp_path / "latents")
    stats = encode_dataset(Identity(), "vae_image", MediaExamples(src, "vae_image"), out,
                           num_examples=4, batch_size=4)
    assert stats["encoded"] == 2 and stats["skipped"] == {"bad_field": 2}
    read = LatentArrayRecordSource(f"{out}/{stats['shards'][0]}")
    assert [read[i]["label"] for i in range(len(read))] == [7, 2]
    # the built-in data: every image record carries its class
    out2 = str(tmp_path / "builtin")
    stats = encode_dataset(Identity(), "vae_image", ShapesTones("test"), out2, num_examples=3)
    read = LatentArrayRecordSource(f"{out2}/{stats['shards'][0]}")
    ds = ShapesTones("test")
    assert [read[i]["label"] for i in range(3)] == [ds[i]["label"] for i in range(3)]


def test_tfds_label_feature_becomes_the_example_label(tmp_path):
    import tensorflow_datasets as tfds

    from latentlm_jax.data.tfds_source import TfdsSource

    class LatentlmClassTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "pixels": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield i, {"pixels": np.full((4, 4, 3), i, np.uint8), "label": i % 3}

    LatentlmClassTest(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    src = TfdsSource("latentlm_class_test", "train", str(tmp_path), "image=pixels",
                     image_resolution=4, only="image", label="label")
    assert sorted((int(src[i]["image"][0, 0, 0]) % 3, src[i]["label"]) for i in range(4)) == \
        [(0, 0), (0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="no feature 'cls'"):
        TfdsSource("latentlm_class_test", "train", str(tmp_path), "image=pixels", label="cls")


# ---------------------------------------------------------------------------- the model
def class_model_cfg():
    m = tiny_model()
    m.image_latent_dim, m.num_classes, m.head.depth = D, CLASSES, 2
    return m


@pytest.fixture(scope="module")
def class_model():
    """A tiny class-conditional LatentLM whose head depends on its condition (the zero-initialised
    adaLN and output layers made random)."""
    model = LatentLM(class_model_cfg(), rngs=nnx.Rngs(1))
    head = model.heads["image"]
    for i, layer in enumerate((head.out, head.final_ada, *(b.ada for b in head.blocks))):
        layer.kernel[...] = jax.random.normal(jax.random.key(i), layer.kernel.shape) * 0.3
    return model


def test_label_embedding_against_a_plain_lookup(class_model):
    model = class_model
    assert model.label_embed.shape == (CLASSES + 1, 32)  # + the null class
    tokens = jnp.array([[V + 0, TOK.latent_id, 65, V + CLASSES, V + 3]])
    got = np.asarray(model.embed_tokens(tokens))
    table, labels = np.asarray(model.embed.embedding[...]), np.asarray(model.label_embed[...])
    want = np.stack([labels[0], table[TOK.latent_id], table[65], labels[CLASSES], labels[3]])
    np.testing.assert_allclose(got[0], want, rtol=0, atol=0)
    # the LM head predicts the text vocabulary only, never a class id
    assert model.logits(jnp.zeros((1, 1, 32))).shape[-1] == V


def test_generation_by_class_guides_with_the_null_class(class_model):
    gen = Generator(class_model, class_model_cfg(), TOK, image_latents=N)
    rows = class_prompt_rows([1, 4], vocab_size=V, num_classes=CLASSES, guided=True)
    assert rows == [[V + 1], [V + 4], [V + CLASSES], [V + CLASSES]]  # differ in the class alone

    def gen_latents(labels, scale):  # the same noise for every call of one row
        opts = SamplingOptions(method="ddim", steps=3, cfg_scale=scale)
        return class_to_latents(gen, labels, jax.random.key(0), opts)

    one, four = gen_latents([1], 3.0)[0], gen_latents([4], 3.0)[0]
    assert one.shape == four.shape == (N, D) and np.isfinite(one).all()
    assert not np.allclose(one, four)  # the class matters
    # at scale 0 the guided stream follows the unconditional one: the null class alone
    np.testing.assert_allclose(gen_latents([1], 0.0)[0], gen_latents([CLASSES], 1.0)[0],
                               rtol=1e-4, atol=1e-5)


def test_class_id_arguments():
    assert parse_class_ids("3") == [3] and parse_class_ids("0, 17,179") == [0, 17, 179]
    for bad in ("", "a", "-1", "1,,2"):
        with pytest.raises(ConfigError):
            parse_class_ids(bad)
    with pytest.raises(ConfigError, match="not a class-conditional model"):
        check_class_ids([0], 0, "w")
    with pytest.raises(ConfigError, match=r"outside \[0, 180\)"):
        check_class_ids([3, 180], 180, "w")


def test_generate_cli_class_requests_are_checked_before_loading(tmp_path):
    import argparse

    from latentlm_jax.cli import generate

    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)

    def check(*argv):
        return generate.check_request(parser.parse_args(["--workdir", "w", *argv]))

    assert check("--class-id", "all", "--out", str(tmp_path / "a")) == []
    for argv, message in ((["--class-id", "x", "--out", "o"], "class ids"),
                          (["--class-id", "3", "--prompt", "p", "--out", "o"], "class ids alone"),
                          (["--class-id", "3", "--modality", "audio", "--out", "o"], "alone"),
                          (["--class-id", "3"], "--out")):
        with pytest.raises(ConfigError, match=message):
            check(*argv)


def test_class_scores_score_images_against_their_class(tmp_path):
    from PIL import Image

    from latentlm_jax.data.shapes_tones import HELD_OUT_COMBINATIONS, render_image
    from latentlm_jax.generate.class_scores import score_class_samples

    held = class_id(HELD_OUT_COMBINATIONS[0])
    lines = []
    for i, (drawn, label) in enumerate(((5, 5), (held, held), (7, 8))):  # the last is wrong
        Image.fromarray(render_image(**class_attributes(drawn))).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "label": label}) + "\n")
    (tmp_path / "manifest.jsonl").write_text("".join(lines))
    got = score_class_samples(str(tmp_path))
    assert got["samples"] == 3 and got["class"] == pytest.approx(2 / 3)
    assert got["class_seen"] == 0.5 and got["class_held_out"] == 1.0


# ---------------------------------------------------------------------------- configs
def test_config_errors_for_half_set_class_conditioning():
    c = base_config()
    c.data.source, c.model.image_latent_dim = "latents", 8
    c.model.num_classes = 10
    with pytest.raises(ConfigError, match="data.label"):
        validate(c)
    c.model.num_classes, c.data.label = 0, "label"
    with pytest.raises(ConfigError, match="model.num_classes"):
        validate(c)
    c.model.num_classes, c.data.source = 10, "text_files"
    with pytest.raises(ConfigError, match="data.label"):
        validate(c)


def test_tiny_class_config_validates():
    c = load_config_file(config_path("latentlm_class_tiny.py") + ":/nowhere")
    c.data.latents_dir, c.model.image_latent_dim = "", 8  # validated without the folder
    validate(c)
    assert c.model.num_classes == NUM_CLASSES and c.data.label == "label"
    assert c.data.seq_len % (1 + 16) == 0  # whole documents of the demo's 4×4 latents per row


def authors_parameters(depth, width, heads, head_depth, channels=16, classes=1000, freq=256):
    """Parameters of the authors' ``Transformer`` (LatentLM models/Transformer.py + DiT.py) with
    patch size 1 (1×1 conv embedders with bias), no bias elsewhere, norms without weights."""
    h, f = width, int(width * 4 * 2 / 3 / 64) * 64
    return {"embedders": 2 * (channels * h + h), "timestep": freq * h + h * h,
            "labels": (classes + 1) * h, "blocks": depth * (4 * h * h + 3 * h * f),
            "diffusion_blocks": head_depth * (3 * h * f + 3 * h * h),
            "condition": h * h, "final": 2 * h * h + h * channels}


@pytest.mark.parametrize("size,shape", [("b", (24, 768, 12, 6)), ("l", (32, 1024, 16, 8)),
                                        ("h", (40, 1280, 20, 12))])
def test_imagenet_sizes_match_the_authors_parameter_counts(size, shape):
    from latentlm_jax.cli.describe import parameter_counts

    c = load_config_file(config_path("latentlm_imagenet.py") + f":{size}")
    validate(c)
    depth, h, heads, head_depth = shape
    assert (c.model.num_layers, c.model.emb_dim, c.model.num_heads, c.model.head.depth) == shape
    assert c.data.seq_len == 257 and c.model.num_classes == 1000 and c.data.label == "label"
    ours = parameter_counts(c)
    theirs = authors_parameters(*shape)
    assert ours["modules"]["label_embed"] == theirs["labels"]
    # Norms without gains, as theirs (model.norm_scale=False). Ours adds adaLN biases and an
    # unused 264-id text embedding + LM head; theirs has the two embedders' biases.
    assert not c.model.norm_scale
    ada_bias = (3 * head_depth + 2) * h
    text = 2 * c.model.vocab_size * h
    assert ours["total"] - sum(theirs.values()) == ada_bias + text - 2 * h
    assert ours["modules"]["decoder"] == theirs["blocks"]
    # with learned gains (2 per block + final; the head's condition, per-block and final norms)
    c.model.norm_scale = True
    norms = (2 * depth + 1) * h + (head_depth + 2) * h
    assert parameter_counts(c)["total"] - ours["total"] == norms


def test_imagenet_vae_makes_256_latents_of_16_dims():
    from latentlm_jax.vae.config import image_latent_shape

    c = load_config_file(config_path("vae_imagenet.py"))
    validate(c)
    assert image_latent_shape(c.vae) == (16, 16, 16)
    assert (c.data.tfds_name, c.data.label, c.data.image_resolution) == ("imagenet2012", "label",
                                                                          256)
