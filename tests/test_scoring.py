"""Scorers of generated shapes & tones samples (docs/dataset.md, "Scoring generated samples")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from latentlm_jax.data import scoring as sc
from latentlm_jax.data import shapes_tones as st

ATTRS = ("color", "shape", "size", "position")


def _examples(split: str, n: int) -> list[dict]:
    ds = st.ShapesTones(split, seed=0)
    return [ds[i] for i in range(n)]


# --------------------------------------------------------------------------------------- images

@pytest.mark.parametrize("split", ["train", "test"])
def test_ground_truth_scores_100_percent(split):
    for e in _examples(split, 300):
        img, attrs = e["image"], e["image_attrs"]
        for variant in (img, img.astype(np.float32) / 255, img.astype(np.float64)):
            r = sc.score_image(variant, attrs)
            assert r["correct"] and r["predicted"] == attrs
            assert all(r[k] for k in ATTRS)
        assert sc.score_image(img, e["image_caption"])["correct"]
        a = sc.score_audio(e["audio"], e["audio_pitches"])
        assert a["correct"] and a["count"] and a["predicted"] == e["audio_pitches"]
        assert sc.score_audio(e["audio"], e["audio_caption"])["correct"]
        assert sc.score_caption(e["image_caption"], e["image_caption"])


def test_every_combination_and_jitter_classifies_correctly():
    for size, color, shape, position in st.all_combinations():
        attrs = {"color": color, "shape": shape, "size": size, "position": position}
        for j in itertools.product((-1, 0, 1), repeat=2):
            assert sc.classify_image(st.render_image(**attrs, jitter_xy=j)) == attrs


def test_wrong_expectations_fail_on_exactly_that_attribute():
    img = st.render_image("blue", "circle", "large", "center")
    r = sc.score_image(img, {"color": "red", "shape": "circle", "size": "large",
                             "position": "center"})
    assert not r["correct"] and not r["color"]
    assert r["shape"] and r["size"] and r["position"]
    assert r["predicted"]["color"] == "blue"
    values = {"color": list(st.COLORS), "shape": list(st.SHAPES), "size": list(st.SIZES),
              "position": list(st.POSITIONS)}
    for e in _examples("test", 20):
        truth = e["image_attrs"]
        for attr in ATTRS:
            for v in values[attr]:
                if v == truth[attr]:
                    continue
                r = sc.score_image(e["image"], {**truth, attr: v})
                assert not r["correct"]
                assert [k for k in ATTRS if not r[k]] == [attr]


def test_blank_image_is_incorrect():
    for blank in (np.full((32, 32, 3), 255, np.uint8), np.ones((32, 32, 3), np.float32)):
        assert sc.classify_image(blank) is None
        r = sc.score_image(blank, "a large red circle in the top left")
        assert r["predicted"] is None and not r["correct"]
        assert not any(r[k] for k in ATTRS)


def test_float_images_are_clipped_and_rescaled():
    img = st.render_image("green", "triangle", "small", "bottom right", (1, -1))
    attrs = sc.classify_image(img)
    rng = np.random.default_rng(0)
    x = img.astype(np.float32) / 255
    overshoot = np.where(x > 0.99, 1.05, x - 0.05) + rng.normal(0, 0.01, x.shape)
    assert sc.classify_image(overshoot.astype(np.float32)) == attrs
    big = img.astype(np.float64) + rng.normal(0, 3, img.shape) + np.where(img == 255, 20, 0)
    assert sc.classify_image(big) == attrs
    np.testing.assert_array_equal(sc.to_uint8_image(x), img)
    with_nan = x.copy()
    with_nan[0, 0] = np.nan
    np.testing.assert_array_equal(sc.to_uint8_image(with_nan), img)
    with pytest.raises(ValueError, match="image"):
        sc.classify_image(np.zeros((32, 32)))


def test_image_rules_on_hand_drawn_shapes():
    def canvas(y0, x0, h, w, rgb=(200, 50, 50)):
        img = np.full((32, 32, 3), 255, np.uint8)
        img[y0:y0 + h, x0:x0 + w] = rgb
        return img

    # Size threshold: larger bbox side < 12 -> small.
    assert sc.classify_image(canvas(10, 10, 11, 11))["size"] == "small"
    assert sc.classify_image(canvas(10, 10, 12, 5))["size"] == "large"
    # Color: nearest palette entry to the median (off-palette reddish -> red, any channel < 200).
    assert sc.classify_image(canvas(10, 10, 8, 8))["color"] == "red"
    assert sc.classify_image(canvas(10, 10, 8, 8, (60, 60, 199)))["color"] == "blue"
    assert sc.classify_image(canvas(10, 10, 8, 8, (210, 210, 210))) is None
    # Position: nearest centre to the centroid.
    assert sc.classify_image(canvas(0, 0, 8, 8))["position"] == "top left"
    assert sc.classify_image(canvas(24, 2, 8, 8))["position"] == "bottom left"
    assert sc.classify_image(canvas(12, 12, 8, 8))["position"] == "center"
    # Shape: fill ratio of the bbox (rectangle -> square, a lower-left half triangle -> triangle).
    assert sc.classify_image(canvas(4, 4, 10, 14))["shape"] == "square"
    tri = np.full((32, 32, 3), 255, np.uint8)
    tri[np.tril(np.ones((16, 16), bool)).nonzero()] = (40, 170, 60)
    assert sc.classify_image(tri)["shape"] == "triangle"


# ---------------------------------------------------------------------------------------- audio

def test_audio_wrong_pitch_count_or_slot_is_incorrect():
    wave = st.render_audio(("C4", "E4", "G4"))
    assert sc.score_audio(wave, ("C4", "E4", "G4"))["correct"]
    r = sc.score_audio(wave, ("C4", "E4", "A4"))
    assert not r["correct"] and r["count"] and r["predicted"] == ("C4", "E4", "G4")
    r = sc.score_audio(wave, ("C4", "E4"))
    assert not r["correct"] and not r["count"]
    gap = st.render_audio(("C4", "E4"))
    gap[800:4800] = 0  # note 0 silent: the E4 sits in the second slot
    r = sc.score_audio(gap, ("E4",))
    assert r["predicted"] == ("E4",) and not r["correct"]
    assert sc.classify_audio_windows(gap) == (None, "E4", None)
    silence = np.zeros(16000, np.float32)
    assert sc.classify_audio(silence) == ()
    assert not sc.score_audio(silence, ("C4",))["correct"]


def test_audio_any_length_and_noise():
    rng = np.random.default_rng(0)
    for e in _examples("test", 40):
        w, p = e["audio"], e["audio_pitches"]
        longer = np.concatenate([w, rng.normal(0, 0.3, 5000).astype(np.float32)])
        assert sc.score_audio(longer, p)["correct"]
        noisy = w + rng.normal(0, 0.01, w.shape)
        assert sc.score_audio(noisy, p)["correct"]
        assert sc.score_audio(w[None, :], p)["correct"]  # [1, T] is flattened
    short = st.render_audio(("B4",))[:5000]  # cut after the only note: padded with silence
    assert sc.score_audio(short, ("B4",))["correct"]
    cut = st.render_audio(("B4", "D4"))[:5000]
    assert sc.classify_audio(cut) == ("B4",)


@pytest.mark.parametrize("name", list(st.PITCHES))
def test_pitch_from_plain_sines(name):
    f = st.PITCHES[name]
    t = np.arange(16000) / 16000
    for detune in (-4.0, 0.0, 4.0):
        wave = np.zeros(16000)
        wave[4000:12000] = 0.2 * np.sin(2 * np.pi * (f + detune) * t[4000:12000])
        assert sc.classify_audio_windows(wave)[1] == name
    assert sc.nearest_pitch(f * 2 ** (0.45 / 12)) == name  # within half a semitone


# -------------------------------------------------------------------------------------- captions

def test_caption_round_trips():
    for size, color, shape, position in st.all_combinations():
        attrs = {"color": color, "shape": shape, "size": size, "position": position}
        cap = st.image_caption(**attrs)
        assert sc.parse_image_caption(cap) == attrs
        assert sc.parse_image_caption(f"  {cap}\n") == attrs
    n = 0
    for k in (1, 2, 3):
        for p in itertools.product(st.PITCHES, repeat=k):
            assert sc.parse_audio_caption(st.audio_caption(p)) == p
            n += 1
    assert n == 8 + 64 + 512


@pytest.mark.parametrize("bad", [
    "", "a", "a huge red circle in the top left", "a large pink circle in the top left",
    "a large red star in the top left", "a large red circle in the top",
    "a large red circle in top left",
    "a large red circle in the top left extra", "an large red circle in the top left",
    "a large red circle in the  top left", "A large red circle in the top left",
    "notes C4",
])
def test_parse_image_caption_rejects(bad):
    assert sc.parse_image_caption(bad) is None


@pytest.mark.parametrize("bad", [
    "", "notes", "notes ", "notes H4", "notes C4 C4 C4 C4", "note C4", "notes  C4", "notes c4",
    "a large red circle in the top left",
])
def test_parse_audio_caption_rejects(bad):
    assert sc.parse_audio_caption(bad) is None


def test_score_caption():
    assert sc.score_caption(" notes C4 E4\n", "notes C4 E4")
    assert not sc.score_caption("notes C4 E4 G4", "notes C4 E4")
    assert not sc.score_caption("Notes C4 E4", "notes C4 E4")
    assert not sc.score_caption("notes C4  E4", "notes C4 E4")


def test_invalid_expected_captions_raise():
    img = st.render_image("red", "circle", "large", "center")
    with pytest.raises(ValueError, match="image caption"):
        sc.score_image(img, "notes C4")
    with pytest.raises(ValueError, match="audio caption"):
        sc.score_audio(st.render_audio(("C4",)), "a large red circle in the center")
