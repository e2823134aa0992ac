"""σ-VAEs on any source: the training stream reads a manifest's / TFDS dataset's own pixels and
samples (examples without the modality counted, bad ones skipped or stopping), splits
deterministically over processes, resumes, and a VAE trained on a manifest learns its colours.
Unsupported combinations are one-line config errors. Images over data.max_image_pixels are
refused as too_large before decoding, without Pillow's warning."""

from __future__ import annotations

import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile
from flax import nnx
from PIL import Image

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.data.bad_input import (
    SKIP_COUNTS_KEY,
    BadInput,
    BadInputPolicy,
    DataError,
)
from latentlm_jax.data.media import decode_image_bytes, load_image, prepare_image_array
from latentlm_jax.vae.data import ExampleIterator
from latentlm_jax.vae.evaluation import reconstruct
from latentlm_jax.vae.samples import from_uint8, to_uint8
from latentlm_jax.vae.task import AudioVAETask, ImageVAETask

COLOURS = [(0, 128, 128), (200, 30, 90), (250, 220, 0), (20, 20, 160), (90, 160, 40)]


def vae_config(task: str = "vae_image", **data) -> object:
    c = base_config()
    c.task = task
    c.vae.image.channels, c.vae.image.channel_mult = 8, (1, 2)
    c.vae.audio.channels, c.vae.audio.channel_mult = 4, (1, 2)
    c.vae.eval_examples = 4
    c.train.global_batch_size = 4
    c.data.shuffle = False
    for key, value in data.items():
        c.data[key] = value
    return c


def write_manifest(path, lines: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


def solid_png(path, colour, size=(50, 40)) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


def tone(path, hz: float, seconds: float = 1.0, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.4 * np.sin(2 * np.pi * hz * t), rate)
    return str(path)


# ------------------------------------------------------------------------------ manifest / TFDS
def test_image_vae_batches_are_the_manifest_pixels(tmp_path):
    """The batch is exactly the files' pixels (solid colours unlike the built-in white-background
    shapes); text-only and audio-only lines are counted as no_image, a missing file as
    missing_file."""
    pngs = [solid_png(tmp_path / f"c{i}.png", c) for i, c in enumerate(COLOURS[:4])]
    lines = [{"image": "c0.png", "text": "teal"}, {"text": "only text"}, {"image": "c1.png"},
             {"audio": tone(tmp_path / "a.wav", 440)}, {"image": "c2.png", "text": ""},
             {"image": "gone.png"}, {"image": "c3.png"}]
    c = vae_config(source="manifest", manifest=write_manifest(tmp_path / "m.jsonl", lines))
    batch = next(ImageVAETask().train_iterator(c, 0, 1))
    expected = np.stack([load_image(p, 32) for p in pngs])
    np.testing.assert_array_equal(batch["image"], expected)
    for image, colour in zip(batch["image"], COLOURS, strict=False):
        assert np.abs(image.astype(int) - colour).max() <= 1  # solid, scaled to 32×32
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch[SKIP_COUNTS_KEY] == {"data/skipped/missing_file": 1, "data/skipped/no_image": 2}
    assert (batch["step"] == 0).all()


def test_audio_vae_batches_are_the_manifest_samples(tmp_path):
    wavs = [tone(tmp_path / f"t{i}.wav", 300 + 100 * i) for i in range(4)]
    lines = [{"audio": wavs[0]}, {"image": solid_png(tmp_path / "x.png", COLOURS[0])},
             {"audio": wavs[1], "text": "a tone"}, {"audio": wavs[2]}, {"audio": wavs[3]}]
    c = vae_config("vae_audio", source="manifest",
                   manifest=write_manifest(tmp_path / "m.jsonl", lines))
    batch = next(AudioVAETask().train_iterator(c, 0, 1))
    expected = np.stack([soundfile.read(w, dtype="float32")[0] for w in wavs])
    np.testing.assert_array_equal(batch["audio"], expected)
    assert batch[SKIP_COUNTS_KEY] == {"data/skipped/no_audio": 1}


def test_under_error_a_bad_image_stops_but_other_modalities_do_not(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    solid_png(tmp_path / "ok.png", COLOURS[0])
    lines = [{"text": "text lines are not errors"}, {"image": "ok.png"}, {"image": "bad.png"},
             {"image": "ok.png"}, {"image": "ok.png"}]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    c = vae_config(source="manifest", manifest=manifest, bad_input="error")
    with pytest.raises(DataError, match=rf"corrupt_image\) at manifest {manifest} line 3, "
                                        rf"file {tmp_path}/bad.png"):
        next(ImageVAETask().train_iterator(c, 0, 1))


def test_vae_on_a_tfds_dataset(tmp_path):
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) for i in range(5)]

    class VaeSourcesTiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "caption": tfds.features.Text(),
                "pixels": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                               encoding="zlib")}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, p in enumerate(pixels):
                yield i, {"caption": "" if i == 1 else f"x {i}", "pixels": p}

    VaeSourcesTiny(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    c = vae_config(source="tfds", tfds_name="vae_sources_tiny", tfds_data_dir=str(tmp_path),
                   tfds_feature_map="text=caption,image=pixels")
    c.train.global_batch_size = 5
    batch = next(ImageVAETask().train_iterator(c, 0, 1))
    # TFDS orders records by its own key hash; the empty caption of example 1 is not read
    expected = sorted(prepare_image_array(p, 32).tobytes() for p in pixels)
    assert sorted(im.tobytes() for im in batch["image"]) == expected
    assert SKIP_COUNTS_KEY not in batch

    c.data.tfds_feature_map = "text=caption"
    with pytest.raises(ConfigError, match="tfds_feature_map: maps no image"):
        validate(c)


# ------------------------------------------------------------------------------ the iterator
class Flaky:
    """Examples ``i`` (pixels all equal to i); the indices in ``bad`` raise BadInput."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i in self.bad:
            raise BadInput("corrupt_image", "broken", where=f"fake:/d/m.jsonl:{i}")
        return {"image": np.full((2, 2, 3), i, np.uint8)}


def rows(batch) -> list[int]:
    return [int(v) for v in batch["image"][:, 0, 0, 0]]


def test_skipping_keeps_the_process_split_deterministic_and_resumable():
    data, bad = Flaky(40, {1, 4, 5, 11}), {1, 4, 5, 11}
    its = [ExampleIterator(data, "image", 8, p, 2, policy=BadInputPolicy("skip"))
           for p in range(2)]
    got = {p: [next(it) for _ in range(3)] for p, it in enumerate(its)}
    for p in range(2):  # each process reads its own positions in order, skipping the bad ones
        expected = [i for i in range(p, 40, 2) if i not in bad][:12]
        assert sum((rows(b) for b in got[p]), []) == expected
        assert [int(b["step"][0]) for b in got[p]] == [0, 1, 2]
    assert not set(sum((rows(b) for b in got[0]), [])) & set(sum((rows(b) for b in got[1]), []))
    assert got[1][0][SKIP_COUNTS_KEY] == {"data/skipped/corrupt_image": 3}  # 1, 5 and 11
    assert SKIP_COUNTS_KEY not in got[1][1]

    # resume process 1 after its first batch from the state a checkpoint stores (JSON)
    again = ExampleIterator(data, "image", 8, 1, 2, policy=BadInputPolicy("skip"))
    first = ExampleIterator(data, "image", 8, 1, 2, policy=BadInputPolicy("skip"))
    next(first)
    again.set_state(json.loads(json.dumps(first.get_state())))
    for k in (1, 2):
        b = next(again)
        assert rows(b) == rows(got[1][k]) and int(b["step"][0]) == k

    with pytest.raises(DataError, match=r"corrupt_image\) at fake /d/m.jsonl record 1"):
        next(ExampleIterator(data, "image", 8, 1, 2, policy=BadInputPolicy("error")))
    with pytest.raises(DataError, match="no usable image in 6 examples"):
        next(ExampleIterator(Flaky(6, set(range(6))), "image", 2,
                             policy=BadInputPolicy("skip")))


def test_epochs_are_reshuffled_deterministically():
    data = [{"image": np.full((1, 1, 3), i, np.uint8)} for i in range(10)]

    def stream(seed):
        it = ExampleIterator(data, "image", 5, shuffle_seed=seed)
        return [rows(next(it)) for _ in range(4)]

    a = stream(3)
    assert sorted(a[0] + a[1]) == sorted(a[2] + a[3]) == list(range(10))  # each epoch: all once
    assert a[0] + a[1] != a[2] + a[3] and a == stream(3) and a != stream(4)


# ------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("changes,fragment", [
    ({"data.source": "text_files"}, "data.source: a vae_image run reads images"),
    ({"data.source": "latents"}, "data.source: a vae_image run reads images"),
    ({"data.source": "manifest"}, "data.manifest: required"),
    ({"data.source": "manifest", "data.manifest": "m.jsonl", "vae.image.resolution": 64},
     "data.image_resolution: 32, but the σ-VAE reads 64"),
    ({"data.max_image_pixels": 10**9}, "data.max_image_pixels: must be in"),
])
def test_unsupported_combinations_are_config_errors(changes, fragment):
    c = vae_config()
    for key, value in changes.items():
        group, field = key.rsplit(".", 1)
        node = c
        for part in group.split("."):
            node = node[part]
        node[field] = value
    with pytest.raises(ConfigError, match=fragment):
        validate(c)


def test_audio_sizes_must_match_and_builtin_sizes_are_fixed(tmp_path):
    c = vae_config("vae_audio", source="manifest", manifest="m.jsonl", audio_samples=8000)
    with pytest.raises(ConfigError, match="data.audio_samples: 8000, but the σ-VAE reads 16000"):
        validate(c)
    c = vae_config()
    c.vae.image.resolution = 64
    with pytest.raises(ConfigError, match="vae.image.resolution: the built-in data has 32"):
        ImageVAETask().train_iterator(c, 0, 1)


# ------------------------------------------------------------------------------ huge images
@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> str:
    """12000×12000 bilevel PNG: 33 KB on disk, 144 MP (≈1.7 GB to decode as RGB)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (12000, 12000), 1).save(path, optimize=True)
    return str(path)


def test_huge_images_are_too_large_before_decoding(huge_png, tmp_path):
    with warnings.catch_warnings(record=True) as caught:  # the filters as the library sets them
        t0 = time.perf_counter()
        with pytest.raises(BadInput) as e:
            load_image(huge_png, 32)
        elapsed = time.perf_counter() - t0
    assert e.value.reason == "too_large" and e.value.file == huge_png
    assert "12000×12000 = 144,000,000 pixels, over data.max_image_pixels=134,217,728" in str(
        e.value)
    assert elapsed < 1.0  # decoding it takes seconds and 1.7 GB
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]
    # the limit comes from the config, through the source
    solid_png(tmp_path / "small.png", COLOURS[0], size=(50, 40))
    lines = [{"image": "small.png"}] * 3 + [{"image": huge_png}]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    c = vae_config(source="manifest", manifest=manifest, max_image_pixels=2000,
                   bad_input="error")
    c.train.global_batch_size = 1
    it = ImageVAETask().train_iterator(c, 0, 1)
    for _ in range(3):  # 50×40 = 2000 pixels: allowed
        next(it)
    with pytest.raises(DataError, match=rf"too_large\) at manifest {manifest} line 4, file "
                                        rf"{huge_png}: 12000×12000 = 144,000,000 pixels, over "
                                        rf"data.max_image_pixels=2,000"):
        next(it)
    c.data.max_image_pixels = 1999
    c.data.bad_input = "skip"
    with pytest.raises(DataError, match=r"no usable image in 4 examples .*4 \(too_large\)"):
        next(ImageVAETask().train_iterator(c, 0, 1))
    with pytest.raises(BadInput, match="too_large"):  # decoded arrays (TFDS) too
        prepare_image_array(np.zeros((50, 40, 3), np.uint8), 32, max_pixels=1999)


def test_pillows_bomb_error_is_too_large(tmp_path):
    """Over 2 × Pillow's MAX_IMAGE_PIXELS Pillow refuses to open the file; still too_large."""
    import io

    buf = io.BytesIO()
    Image.new("1", (14000, 14000), 1).save(buf, format="PNG")  # 196 MP
    with pytest.raises(BadInput) as e:
        decode_image_bytes(buf.getvalue(), 32, file="x.png")
    assert e.value.reason == "too_large" and "decompression bomb" in str(e.value)


def test_config_pixel_limit_is_below_pillows_error():
    from latentlm_jax.config.validate import PILLOW_MAX_PIXELS
    from latentlm_jax.data.media import DEFAULT_MAX_IMAGE_PIXELS

    assert PILLOW_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    assert base_config().data.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS < PILLOW_MAX_PIXELS
    assert DEFAULT_MAX_IMAGE_PIXELS > 11648 * 8736  # a 100-MP medium-format photo


# ------------------------------------------------------------------------------ learning
@pytest.mark.slow  # building and compiling the model: ~15-30 s on 2 busy cores
def test_a_vae_trained_on_a_manifest_learns_its_colour(tmp_path):
    """A few optimizer steps on solid teal images move decode(μ) from grey towards teal."""
    for i in range(4):
        solid_png(tmp_path / f"t{i}.png", COLOURS[0], size=(32 + i, 32))
    lines = [{"image": f"t{i}.png"} for i in range(4)] + [{"text": "skipped"}]
    c = vae_config(source="manifest", manifest=write_manifest(tmp_path / "m.jsonl", lines),
                   shuffle=True)
    task = ImageVAETask()
    model = task.build_model(c, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(5e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch, key):
        grads = jax.grad(lambda p: task.loss_fn(nnx.merge(graphdef, p), batch, key)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    teal = np.full((1, 32, 32, 3), COLOURS[0], np.uint8)

    def error(p) -> float:
        recon = to_uint8(reconstruct(nnx.merge(graphdef, p), from_uint8(teal)))
        return float(np.abs(recon.astype(float) - teal).mean())

    before = error(params)
    it = task.train_iterator(c, 0, 1)
    for k in range(20):
        batch = {key: jnp.asarray(v) for key, v in next(it).items() if key != SKIP_COUNTS_KEY}
        params, opt = step(params, opt, batch, jax.random.key(k))
    after = error(params)
    assert before > 40 and after < before / 3, (before, after)
