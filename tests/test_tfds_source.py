"""TfdsSource over a tiny TFDS dataset prepared here as ArrayRecord, without TensorFlow."""

from __future__ import annotations

import io
import pickle
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from latentlm_jax.data.bad_input import BadInput, BadInputPolicy, SkippingSource
from latentlm_jax.data.media import decode_image_bytes, resample
from latentlm_jax.data.tfds_source import TfdsSource, parse_feature_map

NAME = "latentlm_tiny_test"
LABELS = ["circle", "square", "triangle"]
N = 7
BAD = {3: "empty_text", 5: "invalid_utf8"}


def _example(i: int) -> dict:
    rng = np.random.default_rng(i)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(png, format="PNG")
    caption = {3: "  ", 5: b"caf\xe9"}.get(i, f"example {i}")
    return {
        "caption": caption,
        "pixels": rng.integers(0, 256, (6 + i, 10, 3), dtype=np.uint8),
        "png": png.getvalue(),
        "label": i % len(LABELS),
        "wave": rng.standard_normal((400 + 10 * i, 2)).astype(np.float32),
        "meta": {"note": f"note {i}"},
    }


class LatentlmTinyTest(tfds.core.GeneratorBasedBuilder):
    """Images as uint8 Tensor features (tfds.features.Image would need TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "caption": tfds.features.Text(),
                "pixels": tfds.features.Tensor(
                    shape=(None, None, 3), dtype=np.uint8, encoding="zlib"
                ),
                "png": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.ClassLabel(names=LABELS),
                "wave": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                "meta": {"note": tfds.features.Text()},
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N):
            yield i, _example(i)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    LatentlmTinyTest(data_dir=d, file_format="array_record").download_and_prepare()
    return d


def _caption_index(caption: str) -> int:
    return int(caption.removeprefix("example "))


def test_round_trip_against_the_generated_examples(data_dir):
    fmap = {"text": "caption", "image": "pixels", "audio": "wave"}
    src = TfdsSource(NAME, "train", data_dir, fmap, sample_rate=8000, source_sample_rate=8000)
    assert len(src) == N
    seen, bad = set(), {}
    for i in range(len(src)):
        try:
            rec = src[i]
        except BadInput as exc:
            assert exc.where == f"tfds:{NAME}/train:{i}"
            bad[i] = exc.reason
            continue
        k = _caption_index(rec["text"])
        ex = _example(k)
        np.testing.assert_array_equal(rec["image"], ex["pixels"])  # native size, exact
        np.testing.assert_allclose(rec["audio"], ex["wave"].mean(axis=1), atol=1e-7)
        assert rec["audio"].dtype == np.float32 and rec["source"] == f"tfds:{NAME}/train:{i}"
        seen.add(k)
    assert seen == set(range(N)) - set(BAD)
    assert sorted(bad.values()) == sorted(BAD.values())
    assert "tensorflow" not in sys.modules


def test_resize_resample_classlabel_bytes_and_nested(data_dir):
    by_caption = TfdsSource(NAME, "train", data_dir, {"text": "caption"})
    src = TfdsSource(
        NAME,
        "train",
        data_dir,
        {"text": "label", "image": "png", "audio": "wave"},
        image_resolution=4,
        sample_rate=16000,
        num_samples=850,
        source_sample_rate=8000,
    )
    nested = TfdsSource(NAME, "train", data_dir, {"text": "meta/note"})
    for i in range(N):
        try:
            k = _caption_index(by_caption[i]["text"])
        except BadInput:
            continue
        ex, rec = _example(k), src[i]
        assert rec["text"] == LABELS[k % len(LABELS)]
        np.testing.assert_array_equal(rec["image"], decode_image_bytes(ex["png"], 4))
        assert rec["image"].shape == (4, 4, 3)
        want = resample(ex["wave"].mean(axis=1), 8000, 16000)  # 800 + 20 k samples
        m = min(850, want.shape[0])  # padded for k < 3, cut for k >= 3
        assert rec["audio"].shape == (850,)
        np.testing.assert_allclose(rec["audio"][:m], want[:m], atol=1e-6)
        assert np.all(rec["audio"][m:] == 0)
        assert nested[i]["text"] == f"note {k}" and nested[i]["image"] is None


def test_feature_map_is_checked(data_dir):
    want = {"text": "caption", "image": "pixels"}
    assert parse_feature_map(" text = caption, image=pixels,") == want
    assert parse_feature_map([("text", "caption"), ("image", "pixels")]) == want
    assert TfdsSource(NAME, "train", data_dir, "text=caption").feature_map == {"text": "caption"}
    for bad in ("", "text", "video=pixels", "text=", {}):
        with pytest.raises(ValueError, match="feature_map"):
            parse_feature_map(bad)
    with pytest.raises(ValueError, match="subset"):
        TfdsSource(NAME, "train", data_dir, {"video": "pixels"})
    with pytest.raises(ValueError, match="sample_rate"):
        TfdsSource(NAME, "train", data_dir, {"audio": "wave"})
    with pytest.raises(ValueError, match="no feature 'pics'.*caption"):
        TfdsSource(NAME, "train", data_dir, {"image": "pics"})


def test_grain_skips_and_pickles(data_dir):
    src = TfdsSource(NAME, "train", data_dir, {"text": "caption", "image": "pixels"})
    clone = pickle.loads(pickle.dumps(src))  # what a Grain worker gets
    for i in range(N):
        try:
            a = src[i]
        except BadInput:
            continue
        b = clone[i]
        assert a["text"] == b["text"]
        np.testing.assert_array_equal(a["image"], b["image"])
    policy = BadInputPolicy("skip")
    ds = grain.MapDataset.source(SkippingSource(src, policy)).filter(lambda x: x is not None)
    texts = sorted(x["text"] for x in ds.to_iter_dataset())
    assert texts == sorted(f"example {i}" for i in range(N) if i not in BAD)
    assert policy.counts() == {"data/skipped/empty_text": 1, "data/skipped/invalid_utf8": 1}
