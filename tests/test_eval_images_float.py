"""Float-image FID (docs/fid.md "Float images"): ``latentlm eval-images`` scores a ``.npy`` of
float images in [0, 1] as LatentLM's authors score their decoded images, and ``latentlm
generate`` writes one (``images.npy``) beside its PNGs.

A ``.npy`` of exactly k/255 gives the features of the PNGs; bad files are one-line errors; the
writer and reader round-trip; generate's floats round to its PNGs and follow the manifest's order.

The measurement behind docs/fidelity.md row 41 (FID between the float reconstructions of a
trained σ-VAE and their 8-bit PNGs, random Inception weights) runs with

    LATENTLM_FLOAT_FID_VAE=runs/demo/vae_image pytest -s tests/test_eval_images_float.py -k measure

and is skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from latentlm_jax.cli.main import main
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.image_metrics.float_images import FloatImageFile, FloatImageWriter
from latentlm_jax.image_metrics.images import ImageSet

N = 4  # images per set: the network runs at 299² on a CPU


def _pixels(n: int = N, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.integers(-70, 70, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_npy_of_k_over_255_gives_the_network_input_of_the_pngs(tmp_path):
    """Read through ``ImageSet``, a ``.npy`` of exact k/255 floats and the PNGs of the same pixels
    become the same Inception input bit for bit, so the network gives them the same features."""
    from latentlm_jax.image_metrics.images import batches
    from latentlm_jax.image_metrics.inception import to_inception_input

    pixels = _pixels()
    (tmp_path / "png").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "png" / f"{i}.png")
    np.save(tmp_path / "f.npy", pixels.astype(np.float32) / np.float32(255))
    floats, pngs = (ImageSet(str(tmp_path / x), "--images") for x in ("f.npy", "png"))
    assert floats.exact_count and len(floats) == N
    (f,), (p,) = (list(batches(iter(s), N)) for s in (floats, pngs))
    assert f.dtype == np.float32 and p.dtype == np.uint8
    f_in, p_in = (np.asarray(to_inception_input(jnp.asarray(x))) for x in (f, p))
    assert f_in.shape == (N, 299, 299, 3) and np.abs(p_in).max() > 0
    np.testing.assert_array_equal(f_in, p_in)


def _npy(tmp_path, name: str, array: np.ndarray) -> str:
    np.save(tmp_path / name, array)
    return str(tmp_path / name)


def test_bad_npy_files_are_one_line_errors(tmp_path):
    good = _pixels(2).astype(np.float32) / 255
    cases = {
        "shape.npy": (good[..., 0], r"shape \(2, 24, 24\), not \[N, H, W, 3\]"),
        "rgba.npy": (np.zeros((2, 8, 8, 4), np.float32), r"shape \(2, 8, 8, 4\)"),
        "empty.npy": (np.zeros((0, 8, 8, 3), np.float32), r"shape \(0, 8, 8, 3\)"),
        "int.npy": (np.zeros((2, 8, 8, 3), np.int64), "dtype int64, not float16/32/64"),
        "u8.npy": (_pixels(2), "dtype uint8, not float16/32/64"),
        "fortran.npy": (np.asfortranarray(good), "Fortran-order"),
    }
    for name, (array, match) in cases.items():
        with pytest.raises(ConfigError, match=match):
            FloatImageFile(_npy(tmp_path, name, array), "--images")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ConfigError, match=r"--images .*junk\.npy: not a \.npy file"):
        FloatImageFile(str(tmp_path / "junk.npy"), "--images")
    np.save(tmp_path / "obj.npy", np.array([None, 1], object), allow_pickle=True)
    with pytest.raises(ConfigError, match="dtype object"):
        FloatImageFile(str(tmp_path / "obj.npy"), "--images")
    _npy(tmp_path, "cut.npy", good)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-5])
    with pytest.raises(ConfigError, match=r"bytes where its header .* needs .*\(truncated\)"):
        FloatImageFile(str(tmp_path / "cut.npy"), "--images")

    # values: slightly outside [0, 1] is clamped; another convention or NaN is an error
    clamped = good.copy()
    clamped[0, 0, 0] = [-0.2, 1.3, 0.5]
    got = np.stack(list(FloatImageFile(_npy(tmp_path, "c.npy", clamped), "--images")))
    np.testing.assert_array_equal(got, np.clip(clamped, 0, 1))
    for name, array, match in [("bytes.npy", good * 255, "max 25[0-9]"),
                               ("signed.npy", good * 2 - 1, "min -"),
                               ("nan.npy", np.where(good > 0.5, np.nan, good), "NaN / Inf")]:
        with pytest.raises(ConfigError, match=f"image 0 has values outside .*{match}"):
            list(FloatImageFile(_npy(tmp_path, name, array.astype(np.float32)), "--images"))


def test_a_bad_npy_stops_the_command_in_one_line(tmp_path, capsys):
    """Found from the header, before the network is built (values: as they are read)."""
    path = _npy(tmp_path, "x.npy", np.zeros((2, 8, 8, 3), np.int32))
    for flag in ("--images", "--ref"):
        args = ["--images", path] if flag == "--images" else [
            "--images", _npy(tmp_path, "ok.npy", np.zeros((2, 8, 8, 3), np.float32)),
            "--ref", path]
        assert main(["eval-images", *args, "--random-weights", "--splits", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"latentlm: error: {flag} ")
        assert "x.npy: dtype int32, not float16/32/64" in err


def test_writer_round_trip_and_its_checks(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.uniform(-0.1, 1.1, (5, 6, 7, 3))
    path = str(tmp_path / "sub" / "images.npy")
    with FloatImageWriter(path, 5) as w:
        w.append(images[:3])
        w.append(images[3:])
    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (5, 6, 7, 3)
    np.testing.assert_array_equal(loaded, np.clip(images, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(np.stack(list(FloatImageFile(path, "--images"))), loaded)
    with pytest.raises(ValueError, match="wrote 3 of 5"), FloatImageWriter(path, 5) as w:
        w.append(images[:3])
    with pytest.raises(ValueError, match="do not fit"), FloatImageWriter(path, 5) as w:
        w.append(images[:3])
        w.append(images[:2, :5])


# ------------------------------------------------------------------ latentlm generate's images.npy
class _FakeGenerator:
    """Stands in for the LatentLM: fixed random latents per prompt."""

    def __init__(self, model, model_config, tok, image_latents):
        self.n = image_latents

    def text_to_latents(self, prompts, modality, key, opts):
        d = 8
        return [np.random.default_rng(ord(p[0])).normal(size=(self.n, d)).astype(np.float32)
                for p in prompts]


@pytest.mark.slow  # a σ-VAE decode compiled twice, generate run twice
def test_generate_writes_float_images_that_round_to_its_pngs(tmp_path, monkeypatch):
    from flax import nnx

    from latentlm_jax.cli import generate as cli
    from latentlm_jax.config.base import base_config
    from latentlm_jax.config.loading import load_config_file
    from latentlm_jax.generate import codecs, generator
    from latentlm_jax.generate.generator import SamplingOptions
    from latentlm_jax.generate.prompts import PromptRequest
    from latentlm_jax.modality import IMAGE
    from latentlm_jax.vae.image import ImageVAE
    from latentlm_jax.vae.samples import to_uint8
    from tests.helpers import config_path

    vae_cfg = load_config_file(config_path("vae_image_tiny.py"))
    vae = ImageVAE(vae_cfg.vae, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    media_codec = codecs.MediaCodec

    def fake_codec(config, modality, devices=None):
        codec = media_codec.__new__(media_codec)
        codec.modality, codec.name, codec.vae_config, codec.vae = IMAGE, "image", vae_cfg, vae
        d = codec.grid()[-1]
        codec.stats = {"mean": rng.normal(size=d).astype(np.float32),
                       "std": rng.uniform(0.5, 2.0, d).astype(np.float32)}
        return codec

    monkeypatch.setattr(codecs, "MediaCodec", fake_codec)
    monkeypatch.setattr(generator, "Generator", _FakeGenerator)
    config = base_config()
    config.model.image_latent_dim = vae_cfg.vae.image.latent_dim
    requests = [PromptRequest(0, 1, "a", "image", 3, 0), PromptRequest(1, 2, "b", "image", 2, 7)]
    args = argparse.Namespace(batch_size=2, out=str(tmp_path / "out"), no_float_images=False,
                              prompts_file="p.jsonl", workdir=str(tmp_path), no_ema=False)
    tok = argparse.Namespace(encode=lambda s: [0] * len(s))
    assert cli._text_to_media(args, requests, None, config, 0, tok, SamplingOptions(), []) == 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().split("\n")
             if x]
    floats = np.load(tmp_path / "out" / "images.npy")
    assert floats.shape == (5, 32, 32, 3) and floats.dtype == np.float32 and len(lines) == 5
    assert floats.min() >= 0.0 and floats.max() <= 1.0 and floats.std() > 0
    pngs = np.stack([np.asarray(Image.open(tmp_path / "out" / x["image"])) for x in lines])
    # row i is manifest line i; its PNG is the 8-bit rounding of the same decoded image
    np.testing.assert_array_less(np.abs(floats * 255 - pngs.astype(np.float32)), 0.5 + 1e-3)
    # and those PNGs are what MediaCodec.decode_batch makes of the same latents
    codec = fake_codec(config, IMAGE)
    latents = _FakeGenerator(None, None, None, int(np.prod(codec.grid()[:-1]))).text_to_latents(
        ["a", "b"], IMAGE, None, None)
    np.testing.assert_array_equal(to_uint8(codec.decode_images_float(latents)),
                                  codec.decode_batch(latents))

    args.no_float_images, args.out = True, str(tmp_path / "none")
    assert cli._text_to_media(args, requests, None, config, 0, tok, SamplingOptions(), []) == 0
    assert not (tmp_path / "none" / "images.npy").exists()


# ------------------------------------------------------------------------------ the measurement
@pytest.mark.skipif(not os.environ.get("LATENTLM_FLOAT_FID_VAE"),
                    reason="set LATENTLM_FLOAT_FID_VAE to a trained image σ-VAE workdir")
def test_measure_float_against_png_fid(tmp_path, capsys):
    """FID between a σ-VAE's float reconstructions of 500 built-in test images and their 8-bit
    PNGs (random Inception weights: the size of the effect, not a comparable FID)."""
    import jax.numpy as jnp

    from latentlm_jax.data.encode_latents import model_input
    from latentlm_jax.data.shapes_tones import ShapesTones
    from latentlm_jax.train.checkpoint_io import load_model
    from latentlm_jax.vae.samples import to_uint8

    n = int(os.environ.get("LATENTLM_FLOAT_FID_N", "500"))
    vae, _, _ = load_model(os.environ["LATENTLM_FLOAT_FID_VAE"])
    data = ShapesTones(split="test", seed=0)
    pixels = np.stack([data[i]["image"] for i in range(n)])
    raw = np.concatenate([np.asarray(vae.decode(vae.mode(jnp.asarray(model_input("image", b)))))
                          for b in np.array_split(pixels, max(1, n // 50))])
    floats = (np.clip(raw, -1, 1) * 0.5 + 0.5).astype(np.float32)
    np.save(tmp_path / "f.npy", floats)
    (tmp_path / "png").mkdir()
    for i, p in enumerate(to_uint8(raw)):
        Image.fromarray(p).save(tmp_path / "png" / f"{i:04d}.png")
    (tmp_path / "orig").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "orig" / f"{i:04d}.png")
    common = ["--random-weights", "--batch", "50", "--splits", "10"]
    assert main(["eval-images", "--images", str(tmp_path / "f.npy"), "--ref",
                 str(tmp_path / "png"), *common, "--out", str(tmp_path / "a.json"),
                 "--save-ref-stats", str(tmp_path / "png.npz")]) == 0
    assert main(["eval-images", "--images", str(tmp_path / "orig"), "--ref",
                 str(tmp_path / "png.npz"), *common, "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    q = np.abs(floats * 255 - to_uint8(raw).astype(np.float32))
    capsys.readouterr()
    with capsys.disabled():
        print(f"\n{n} σ-VAE reconstructions at {floats.shape[1]} px, RANDOM Inception weights: "
              f"FID float vs 8-bit PNG {a['fid']:.4g}; FID originals vs PNG reconstructions "
              f"{b['fid']:.4g} (the scale); mean |float·255 - PNG| {q.mean():.3f} levels")
