"""The photo-like manifest made on the fly: real files a manifest source reads, captions that
name what is drawn (the scene scorer agrees with them), the same files for the same seed."""

from __future__ import annotations

import json
import os

import numpy as np
import soundfile as sf
from PIL import Image

from latentlm_jax.data.manifest import ManifestSource
from latentlm_jax.data.photo_like import caption_scene, scene_of, write_manifest, write_prompts


def test_manifest_of_images_and_tones_reads_back(tmp_path):
    path = write_manifest(str(tmp_path / "a"), images=60, audio=3, seed=4)
    with open(path) as f:
        lines = [json.loads(x) for x in f]
    assert len(lines) == 63 and all(x["text"] for x in lines)
    src = ManifestSource(path, image_resolution=32, sample_rate=16000, num_samples=16000)
    images = [src[i] for i in range(60)]
    assert all(x["image"].shape == (32, 32, 3) for x in images)
    sizes = {image_size(os.path.join(tmp_path, "a", x["image"])) for x in lines[:60]}
    assert len(sizes) > 10  # sizes and aspect ratios vary; the loader crops and scales
    right = [scene_of(x["image"]) == caption_scene(x["text"]) for x in images]
    assert np.mean(right) >= 0.85
    tone = src[60]
    assert tone["audio"].shape == (16000,) and tone["text"].startswith("notes ")
    wave, rate = sf.read(os.path.join(tmp_path, "a", lines[60]["audio"]))
    assert rate == 16000 and 0.1 < np.abs(wave).max() <= 0.5
    # same seed, same bytes; another seed, other pictures
    again = write_manifest(str(tmp_path / "b"), images=2, seed=4)
    first = (tmp_path / "a" / "images" / "00000.png").read_bytes()
    assert (tmp_path / "b" / "images" / "00000.png").read_bytes() == first
    write_manifest(str(tmp_path / "c"), images=1, seed=5)
    assert (tmp_path / "c" / "images" / "00000.png").read_bytes() != first
    assert os.path.exists(again)


def test_prompts_file_holds_one_caption_per_line(tmp_path):
    path = write_prompts(str(tmp_path / "p.txt"), 5, seed=1)
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and all(ln.endswith(" scene") for ln in lines)


def image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size
