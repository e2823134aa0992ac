"""The built-in shapes & tones dataset against its specification (docs/dataset.md)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from latentlm_jax.data import shapes_tones as st

SPEC_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
               "yellow": (230, 200, 40), "purple": (150, 60, 190), "orange": (240, 130, 30)}
SPEC_CENTRES = {"top left": (9, 9), "top right": (23, 9), "bottom left": (9, 23),
                "bottom right": (23, 23), "center": (16, 16)}


def _examples(split: str, n: int, seed: int = 0) -> list[dict]:
    ds = st.ShapesTones(split, seed)
    return [ds[i] for i in range(n)]


def _reference_mask(shape: str, size: int, cx: float, cy: float) -> np.ndarray:
    """bool[32, 32] from continuous geometry over the whole image (pixel centres at +0.5)."""
    y, x = np.mgrid[0:32, 0:32] + 0.5
    dx, dy, h = x - cx, y - cy, size / 2
    inside_box = (np.abs(dx) < h) & (np.abs(dy) < h)
    if shape == "circle":
        return dx**2 + dy**2 <= h**2
    if shape == "square":
        return inside_box
    top = cy - h
    tri = inside_box & (np.abs(dx) <= (y - top) / 2)
    tri |= inside_box & (y < top + 1) & (np.abs(dx) < 1)  # the two apex pixels
    return tri


# ------------------------------------------------------------------------------------ constants

def test_constants_match_spec():
    assert st.COLORS == SPEC_COLORS and list(st.COLORS) == list(SPEC_COLORS)
    assert st.SHAPES == ("circle", "square", "triangle")
    assert st.SIZES == {"small": 8, "large": 16}
    assert st.POSITIONS == SPEC_CENTRES
    assert list(st.PITCHES) == ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5"]
    assert st.PITCHES["A4"] == 440.0
    assert st.PITCHES["C4"] == pytest.approx(261.6256, abs=1e-3)
    assert st.PITCHES["C5"] == pytest.approx(2 * st.PITCHES["C4"])
    freqs = list(st.PITCHES.values())
    steps = [round(12 * math.log2(b / a), 9) for a, b in itertools.pairwise(freqs)]
    assert steps == [2, 2, 1, 2, 2, 2, 1]  # the C major scale
    assert (st.SAMPLE_RATE, st.IMAGE_SIZE, st.AUDIO_SAMPLES) == (16000, 32, 16000)


def test_all_combinations():
    combos = st.all_combinations()
    assert len(combos) == len(set(combos)) == 180
    assert set(combos) == set(itertools.product(st.SIZES, st.COLORS, st.SHAPES, st.POSITIONS))


def test_held_out_list_follows_documented_rule_and_is_spread():
    held = st.HELD_OUT_COMBINATIONS
    colors, shapes, sizes, positions = list(st.COLORS), st.SHAPES, list(st.SIZES), list(
        st.POSITIONS)
    rule = tuple((sizes[(k // 3 + k % 3) % 2], colors[k // 3], shapes[k % 3], positions[k % 5])
                 for k in range(18))
    assert held == rule
    assert len(set(held)) == 18 and set(held) <= set(st.all_combinations())
    # Every (color, shape) pair is held out exactly once.
    assert sorted((c, s) for _, c, s, _ in held) == sorted(itertools.product(colors, shapes))
    train = [c for c in st.all_combinations() if not st.is_held_out(c)]
    assert len(train) == 162
    # Every attribute value, and every pair of values of two attributes, still appears in training.
    for i, j in itertools.combinations(range(4), 2):
        all_pairs = {(c[i], c[j]) for c in st.all_combinations()}
        assert {(c[i], c[j]) for c in train} == all_pairs


# --------------------------------------------------------------------------------------- images

@pytest.mark.parametrize("combo", st.all_combinations())
def test_render_image_matches_geometry_for_every_combination_and_jitter(combo):
    size, color, shape, position = combo
    s = st.SIZES[size]
    for jx, jy in itertools.product((-1, 0, 1), repeat=2):
        img = st.render_image(color, shape, size, position, (jx, jy))
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        cx, cy = SPEC_CENTRES[position]
        ref = _reference_mask(shape, s, cx + jx, cy + jy)
        colored = np.all(img == SPEC_COLORS[color], axis=-1)
        white = np.all(img == 255, axis=-1)
        np.testing.assert_array_equal(colored, ref)
        assert np.all(colored | white)  # hard edges: palette color or white, nothing else
        rows, cols = np.nonzero(colored)
        assert rows.max() - rows.min() + 1 == s and cols.max() - cols.min() + 1 == s
        # Centre of the bounding box (in pixel-corner coordinates) within ±1 px of the position.
        bx, by = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2
        assert (bx, by) == (cx + jx, cy + jy)
        assert abs(bx - cx) <= 1 and abs(by - cy) <= 1
        # Wholly inside: nothing clipped by the image border (full reference area drawn).
        assert colored.sum() == st.shape_mask(shape, s).sum()
        assert rows.min() >= 0 and cols.min() >= 0 and rows.max() <= 31 and cols.max() <= 31


@pytest.mark.parametrize("s", [8, 16])
def test_shape_masks(s):
    circle, square, tri = (st.shape_mask(x, s) for x in ("circle", "square", "triangle"))
    assert square.all()
    assert abs(circle.mean() - math.pi / 4) < 0.04
    assert 0.5 <= tri.mean() < 0.55
    for m in (circle, tri):
        np.testing.assert_array_equal(m, m[:, ::-1])  # left-right symmetric
    np.testing.assert_array_equal(circle, circle[::-1])
    widths = tri.sum(axis=1)
    assert widths[0] == 2 and widths[-1] == s and np.all(np.diff(widths) >= 0)  # apex up
    for m in (circle, tri):  # each row one contiguous run (convex)
        for row in m:
            idx = np.nonzero(row)[0]
            assert idx.size and idx.max() - idx.min() + 1 == idx.size


def test_render_image_rejects_bad_arguments():
    with pytest.raises(ValueError, match="color"):
        st.render_image("pink", "circle", "large", "center")
    with pytest.raises(ValueError, match="shape"):
        st.render_image("red", "star", "large", "center")
    with pytest.raises(ValueError, match="size"):
        st.render_image("red", "circle", "huge", "center")
    with pytest.raises(ValueError, match="position"):
        st.render_image("red", "circle", "large", "middle")
    with pytest.raises(ValueError, match="jitter"):
        st.render_image("red", "circle", "large", "center", (2, 0))


def test_image_caption():
    assert st.image_caption("red", "circle", "large", "top left") == (
        "a large red circle in the top left")
    attrs = {"color": "blue", "shape": "triangle", "size": "small", "position": "center"}
    assert st.image_caption(**attrs) == "a small blue triangle in the center"


def test_dataset_images_are_consistent_with_their_attributes():
    for e in _examples("train", 200) + _examples("test", 200):
        a = e["image_attrs"]
        assert set(a) == {"color", "shape", "size", "position"}
        assert e["image_caption"] == f"a {a['size']} {a['color']} {a['shape']} in the " \
                                     f"{a['position']}"
        colored = np.all(e["image"] == SPEC_COLORS[a["color"]], axis=-1)
        assert np.all(colored | np.all(e["image"] == 255, axis=-1))
        rows, cols = np.nonzero(colored)
        s = st.SIZES[a["size"]]
        cx, cy = SPEC_CENTRES[a["position"]]
        assert rows.max() - rows.min() + 1 == s
        assert abs((cols.min() + cols.max() + 1) / 2 - cx) <= 1
        assert abs((rows.min() + rows.max() + 1) / 2 - cy) <= 1


# ---------------------------------------------------------------------------------------- audio

def _reference_note(freq: float) -> np.ndarray:
    t = np.arange(4000) / 16000
    x = np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(4 * np.pi * freq * t)
    env = np.ones(4000)
    env[:160] = np.linspace(0, 1, 160, endpoint=False)
    env[-160:] = env[:160][::-1]
    x = x * env
    return 0.5 * x / np.abs(x).max()


def _peak_hz(seg: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size), n=1 << 16))
    return float(np.argmax(spec) * 16000 / (1 << 16))


def _band_peak(seg: np.ndarray, hz: float, n: int = 1 << 16) -> float:
    """Largest FFT magnitude within ±10 Hz of ``hz``."""
    spec = np.abs(np.fft.rfft(seg, n=n))
    return float(spec[int((hz - 10) / 16000 * n):int((hz + 10) / 16000 * n)].max())


@pytest.mark.parametrize("pitches", [("C4",), ("E4", "G4"), ("C4", "F4", "C5"), ("A4", "A4", "B4")])
def test_render_audio_matches_spec(pitches):
    wave = st.render_audio(pitches)
    assert wave.shape == (16000,) and wave.dtype == np.float32
    assert np.abs(wave).max() == 0.5
    # Onsets and durations from 5 ms RMS frames: active exactly during 0.05 + 0.3k … + 0.25 s.
    rms = np.sqrt(np.mean(wave.astype(np.float64).reshape(200, 80) ** 2, axis=1))
    expected_active = np.zeros(200, bool)
    for k in range(len(pitches)):
        start = round((0.05 + 0.3 * k) * 1000 / 5)
        expected_active[start:start + 50] = True
    np.testing.assert_array_equal(rms > 0.01, expected_active)
    silent = np.ones(16000, bool)
    for k, p in enumerate(pitches):
        start = 800 + 4800 * k
        seg = wave[start:start + 4000]
        silent[start:start + 4000] = False
        assert abs(_peak_hz(seg) - st.PITCHES[p]) < 2.0
        assert np.abs(seg).max() == 0.5  # every note peaks at 0.5
        np.testing.assert_allclose(seg, _reference_note(st.PITCHES[p]), atol=1e-6)
        assert 0.2 < _band_peak(seg, 2 * st.PITCHES[p]) / _band_peak(seg, st.PITCHES[p]) < 0.4
    assert np.all(wave[silent] == 0.0)


def test_render_audio_rejects_bad_arguments():
    with pytest.raises(ValueError):
        st.render_audio(())
    with pytest.raises(ValueError):
        st.render_audio(("C4",) * 4)
    with pytest.raises(ValueError, match="pitch"):
        st.render_audio(("H4",))


def test_audio_caption():
    assert st.audio_caption(("C4", "E4", "G4")) == "notes C4 E4 G4"
    assert st.audio_caption(["A4"]) == "notes A4"


def test_dataset_audio_fields():
    counts, seen = set(), set()
    for e in _examples("train", 300):
        p = e["audio_pitches"]
        assert isinstance(p, tuple) and 1 <= len(p) <= 3
        assert e["audio_caption"] == "notes " + " ".join(p)
        np.testing.assert_array_equal(e["audio"], st.render_audio(p))
        counts.add(len(p))
        seen.update(p)
    assert counts == {1, 2, 3} and seen == set(st.PITCHES)


# ------------------------------------------------------------------------------ dataset / splits

def _assert_examples_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype
        else:
            assert a[k] == b[k]


def test_determinism_and_seed_dependence():
    a, b = st.ShapesTones("train", 3), st.ShapesTones("train", 3)
    for i in [0, 1, 17, 999_999, np.int64(5)]:
        _assert_examples_equal(a[i], b[i])
    idx = range(20)
    caps = lambda ds: [(ds[i]["image_caption"], ds[i]["audio_caption"]) for i in idx]
    assert caps(a) != caps(st.ShapesTones("train", 4))
    assert caps(st.ShapesTones("test", 3)) != caps(st.ShapesTones("validation", 3))
    # Arrays differ too (not only captions).
    diff = [not np.array_equal(a[i]["image"], st.ShapesTones("train", 4)[i]["image"]) for i in idx]
    assert sum(diff) >= 10
    # Order of access does not matter: pure function of the index.
    first = a[7]
    a[123]
    _assert_examples_equal(first, a[7])


def test_returned_arrays_are_fresh():
    ds = st.ShapesTones("train")
    e = ds[0]
    e["image"][:] = 0
    e["audio"][:] = 1
    _assert_examples_equal(ds[0], st.ShapesTones("train")[0])
    assert ds[0]["image"].max() == 255


def test_lengths_and_index_errors():
    assert [len(st.ShapesTones(s)) for s in ("train", "validation", "test")] == [
        1_000_000, 10_000, 10_000]
    ds = st.ShapesTones("test")
    with pytest.raises(IndexError):
        ds[10_000]
    with pytest.raises(IndexError):
        ds[-1]
    with pytest.raises(ValueError, match="split"):
        st.ShapesTones("dev")
    assert "test" in repr(ds)


def test_train_never_holds_out_and_test_does():
    n = 3000
    for split in ("train", "validation"):
        ds = st.ShapesTones(split)
        combos = [st.combination_of(ds.attributes(i)) for i in range(n)]
        assert not any(st.is_held_out(c) for c in combos)
        assert len(set(combos)) == 162
    ds = st.ShapesTones("test")
    combos = [st.combination_of(ds.attributes(i)) for i in range(n)]
    assert len(set(combos)) == 180
    frac = np.mean([st.is_held_out(c) for c in combos])
    assert 0.07 < frac < 0.13  # 18 / 180 = 10 %
    for i in range(50):  # attributes() agrees with the full example
        assert ds.attributes(i) == ds[i]["image_attrs"]


def test_held_out_helpers():
    ds = st.ShapesTones("test", seed=1)
    idx = ds.held_out_indices(12)
    assert len(idx) == 12 and idx == sorted(idx)
    assert all(st.is_held_out(ds[i]["image_attrs"]) for i in idx)
    skipped = set(range(idx[-1])) - set(idx)
    assert not any(st.is_held_out(ds.attributes(i)) for i in skipped)
    examples = st.held_out_test_examples(12, seed=1)
    for i, e in zip(idx, examples, strict=True):
        _assert_examples_equal(e, ds[i])
    with pytest.raises(ValueError, match="test"):
        st.ShapesTones("train").held_out_indices(1)


def test_generation_rate():
    rate = st.benchmark_generation(500)
    assert rate >= 2000, f"{rate:.0f} examples/s"
