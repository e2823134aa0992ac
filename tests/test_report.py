"""The demo report: self-contained HTML, Markdown and files, loss-curve PNGs, console table."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import wave
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from latentlm_jax.demo.assets import wav_bytes
from latentlm_jax.demo.plots import read_metrics, spectrogram_rgb, use_log_y
from latentlm_jax.demo.report import write_report
from latentlm_jax.demo.results import (
    AudioSample,
    CaptionSample,
    DemoResults,
    ImageSample,
    StageSummary,
    score_table_text,
)

SR = 16000
TRICKY = 'a <small> red & "circle" in the top left'


def _sine(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_metrics(path, rows: list[dict | str]) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture()
def results(tmp_path) -> DemoResults:
    rng = np.random.default_rng(0)
    steps = range(0, 300, 10)
    vae = _write_metrics(tmp_path / "vae.jsonl", [
        {"step": s, "time": 0.0, "loss": 3.0 * np.exp(-s / 80) + 0.01, "kl": 0.5 + s / 1000}
        for s in steps])
    lm = _write_metrics(tmp_path / "lm.jsonl", [
        {"step": s, "ce": 5.0 - s / 100, "diff/image": 1.0 / (1 + s)} for s in steps])
    stages = [
        StageSummary("image \u03c3-VAE", vae, ["loss", "kl"], 75.0, False),
        StageSummary("LatentLM", lm, ["loss", "ce", "diff/image"], 3725.0, False),
        StageSummary("audio VAE", str(tmp_path / "missing.jsonl"), ["loss"], 0.0, True),
    ]
    captions = [TRICKY, "a large blue square in the center", "a small green triangle in the "
                "bottom right", "a large purple circle in the top right", "a small red circle in "
                "the bottom left", "a large yellow triangle in the top left", "a small orange "
                "square in the top right"]
    correct = [True, False, True, True, False, True, False]
    held = [False, True, True, False, False, False, True]
    images = [ImageSample(c, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), ok,
                          "nothing" if not ok else c[2:], h)
              for c, ok, h in zip(captions, correct, held, strict=True)]
    audio = [AudioSample("notes A4", _sine(440.0), True, "notes A4"),
             AudioSample("notes C4 E4", _sine(261.6), False, "notes C4"),
             AudioSample("notes <G4> & B4", _sine(392.0), True, "notes G4 B4")]
    caps = [CaptionSample("image", captions[1], captions[1], True, image=images[1].image),
            CaptionSample("image", captions[2], "a small green circle & <eos>", False,
                          image=images[2].image),
            CaptionSample("audio", "notes A4", "notes A4", True, wave=_sine(440.0)),
            CaptionSample("audio", "notes C5", "notes B4", False, wave=_sine(523.3))]
    scores = {
        "text\u2192image": {"accuracy": 0.83333, "n": 180},
        "text\u2192image (held-out)": {"accuracy": 0.5, "n": 18},
        "image\u2192text": {"accuracy": 0.95, "n": 60},
        "text\u2192audio": {"accuracy": 0.75, "n": 40},
        "image recon PSNR": {"psnr": 24.137, "n": 64},
        "image FID": {"fid": 12.5, "n": 100},
    }
    targets = {"text\u2192image": 0.8, "text\u2192image (held-out)": 0.6, "image\u2192text": 0.9,
               "text\u2192audio": 0.8, "image recon PSNR": 20.0, "image FID": 20.0}
    return DemoResults(stages, scores, targets, images, audio, caps,
                       {"device": "cpu", "model <dim>": "64 & 2 layers"}, 3800.0, fast=True)


class _Tags(HTMLParser):
    """Collects start tags with their attributes, and the page's text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def of(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


def _parse(path: str) -> tuple[str, _Tags]:
    with open(path, encoding="utf-8") as f:
        page = f.read()
    p = _Tags()
    p.feed(page)
    return page, p


def _decode_data_uri(uri: str) -> tuple[str, bytes]:
    m = re.fullmatch(r"data:([a-z]+/[a-z]+);base64,([A-Za-z0-9+/=]+)", uri)
    assert m, uri[:60]
    return m.group(1), base64.b64decode(m.group(2))


def test_html_is_self_contained_and_complete(results, tmp_path):
    out = tmp_path / "report"
    paths = write_report(results, str(out))
    page, p = _parse(paths["html"])
    # nothing fetched from anywhere: every src is a data URI, every link a same-page anchor
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)
    assert "url(" not in page and "<script" not in page and "<link" not in page
    ids = {a["id"] for _, a in p.tags if "id" in a}
    for tag, attrs in p.tags:
        if "src" in attrs:
            assert attrs["src"].startswith("data:"), tag
        if "href" in attrs:
            assert attrs["href"].startswith("#") and attrs["href"][1:] in ids, attrs["href"]
    n_plots = sum(k.startswith("plot:") for k in paths)
    assert n_plots == 2  # the stage with no metrics file gets no plot
    caption_inputs = sum(c.image is not None or c.wave is not None for c in results.captions)
    imgs = p.of("img")
    assert len(imgs) == len(results.images) + len(results.audio) + caption_inputs + n_plots
    waves = len(results.audio) + sum(c.wave is not None for c in results.captions)
    audios = p.of("audio")
    assert len(audios) == waves
    for a in audios:
        mime, data = _decode_data_uri(a["src"])
        assert mime == "audio/wav"
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (SR, 2, 1)
            assert w.getnframes() == SR
    # generated images are embedded at native size, uncropped and unaltered
    embedded = [np.asarray(Image.open(io.BytesIO(_decode_data_uri(a["src"])[1])))
                for a in imgs if a.get("class") == "px"]
    for s in results.images:
        assert any(e.shape == s.image.shape and np.array_equal(e, s.image) for e in embedded)

    text = "".join(p.text)
    for s in results.images + results.audio:
        assert s.caption in text
    for c in results.captions:
        assert c.truth in text and c.generated in text
    for s in results.images + results.audio:  # what the scorer saw is shown for every miss
        if not s.correct:
            assert s.predicted in text
    # escaped in the source: the raw markup never appears
    assert html.escape(TRICKY) in page and "<small>" not in page and "<eos>" not in page
    assert "model &lt;dim&gt;" in page and "64 &amp; 2 layers" in page

    samples = results.images + results.audio + results.captions
    assert page.count('class="mark ok"') == sum(s.correct for s in samples)
    assert page.count('class="mark bad"') == sum(not s.correct for s in samples)
    verdicts = re.findall(r'class="verdict (pass|fail)"', page)
    # ✓ appears once per correct sample and once per met target, nowhere else; likewise ✗
    assert page.count("\u2713") == sum(s.correct for s in samples) + verdicts.count("pass")
    assert page.count("\u2717") == sum(not s.correct for s in samples) + verdicts.count("fail")
    assert page.count('class="card ok"') == sum(s.correct for s in results.images)
    assert page.count('class="badge held"') == sum(s.held_out for s in results.images)
    assert page.count('<span class="badge">reused</span>') == 1
    assert "fast mode" in page


def test_score_table_text(results):
    table = score_table_text(results)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value", "n", "target", "pass"]
    rows = {name: next(line for line in lines if line.startswith(name + " "))
            for name in results.scores}
    expected = {
        "text\u2192image": ("83.3%", "180", "80.0%", "PASS"),
        "text\u2192image (held-out)": ("50.0%", "18", "60.0%", "FAIL"),
        "image\u2192text": ("95.0%", "60", "90.0%", "PASS"),
        "text\u2192audio": ("75.0%", "40", "80.0%", "FAIL"),
        "image recon PSNR": ("24.14 dB", "64", "20.00 dB", "PASS"),
        "image FID": ("12.5", "100", "20", "PASS"),  # lower is better for FID
    }
    for name, (value, n, target, verdict) in expected.items():
        rest = rows[name][len(name):]
        assert re.search(rf"\s{re.escape(value)}\s+{n}\s+{re.escape(target)}\s+[\u2713\u2717] "
                         rf"{verdict}$", rest), rows[name]
    # columns line up: every value ends in the same column
    ends = {line.index(v) + len(v) for line, (v, *_) in
            ((rows[k], expected[k]) for k in expected)}
    assert len(ends) == 1


def test_score_without_target_has_no_verdict(results):
    results.scores = {"audio recon PSNR": {"psnr": 30.0, "n": 8}}
    results.targets = {}
    row = score_table_text(results).splitlines()[-1]
    assert "30.00 dB" in row and "PASS" not in row and "FAIL" not in row


def test_markdown_and_files(results, tmp_path):
    out = tmp_path / "report"
    paths = write_report(results, str(out))
    with open(paths["markdown"], encoding="utf-8") as f:
        md = f.read()
    pngs = re.findall(r"\]\(([^)\s]+\.png)\)", md)
    wavs = re.findall(r"\]\(([^)\s]+\.wav)\)", md)
    assert len(pngs) == len(results.images) + len(results.audio) + 4 + 2  # + inputs + plots
    assert len(wavs) == len(results.audio) + 2
    for rel in pngs + wavs:
        assert not rel.startswith(("/", "http")) and (out / rel).is_file(), rel
    for k, path in paths.items():
        if k.startswith("plot:"):
            assert os.path.basename(path) in pngs
    # the image files are the samples enlarged ×4 with nearest neighbour
    for i, s in enumerate(results.images):
        big = np.asarray(Image.open(out / f"images/t2i_{i:03d}.png"))
        assert np.array_equal(big, s.image.repeat(4, 0).repeat(4, 1))
    assert md.count("\u2713") == sum(s.correct for s in results.images + results.audio
                                     + results.captions) + 4  # + 4 targets met
    assert md.count("**held-out**") == sum(s.held_out for s in results.images)
    assert r"a \<small\> red \& \"circle\"" not in md  # quotes are not escaped, brackets are
    assert r"a \<small\> red \& " in md and "<small>" not in md
    for name in results.scores:
        assert f"| {name} |" in md


def test_plots_are_valid_pngs(results, tmp_path):
    paths = write_report(results, str(tmp_path / "r"))
    plots = [v for k, v in paths.items() if k.startswith("plot:")]
    assert len(plots) == 2
    for path in plots:
        with Image.open(path) as im:
            assert im.format == "PNG"
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            assert w > 200 and h > 100
            assert np.asarray(im.convert("L")).std() > 5  # not blank


def test_audio_player_cap_links_the_rest(results, tmp_path):
    out = tmp_path / "r"
    paths = write_report(results, str(out), max_audio_players=2)
    _, p = _parse(paths["html"])
    assert len(p.of("audio")) == 2
    links = [a["href"] for a in p.of("a") if not a["href"].startswith("#")]
    assert len(links) == len(results.audio) + 2 - 2
    for rel in links:
        assert rel.endswith(".wav") and (out / rel).is_file()


def test_rerun_removes_stale_samples(results, tmp_path):
    out = tmp_path / "r"
    write_report(results, str(out))
    assert (out / "images" / "t2i_006.png").exists()
    results.images = results.images[:2]
    write_report(results, str(out))
    assert sorted(os.listdir(out / "images"))[:3] == ["i2t_000.png", "i2t_001.png",
                                                      "spec_a2t_002.png"]
    assert not (out / "images" / "t2i_002.png").exists()
    assert (out / "images" / "t2i_001.png").exists()


def test_html_size_budget(tmp_path):
    """~200 worst-case (noise) images and 40 clips stay well under 5 MB."""
    rng = np.random.default_rng(1)
    images = [ImageSample(f"caption {i}", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                          bool(i % 3), "x", i < 18) for i in range(200)]
    audio = [AudioSample(f"notes {i}", rng.uniform(-1, 1, SR).astype(np.float32), True, "")
             for i in range(40)]
    res = DemoResults([], {}, {}, images, audio, [], {}, 0.0, False)
    paths = write_report(res, str(tmp_path / "r"))
    assert os.path.getsize(paths["html"]) < 5_000_000


def test_read_metrics_restart_and_garbage(tmp_path):
    path = _write_metrics(tmp_path / "m.jsonl", [
        {"step": 0, "loss": 4.0}, {"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0},
        {"step": 20, "eval/loss": 2.2}, {"step": 40, "loss": 1.5, "lr": 0.1},
        "not json", "", '{"step": 50, "loss": 1.',  # truncated last line of a killed run
        {"step": 10, "loss": 2.5, "lr": 1e-3},  # resumed from the step-10 checkpoint
        {"step": 20, "loss": float("nan")}, {"step": 30, "loss": 1.0, "name": "x"},
    ])
    m = read_metrics(path)
    steps, loss = m["loss"]
    # the resumed run's rows replace the abandoned run's from step 10 on (40 is gone too);
    # its NaN at step 20 cannot be plotted and is dropped
    assert steps.tolist() == [0, 10, 30]
    assert loss.tolist() == [4.0, 2.5, 1.0]
    assert m["lr"][0].tolist() == [10]
    assert "eval/loss" not in m and "name" not in m and "time" not in m
    assert read_metrics(str(tmp_path / "absent.jsonl")) == {}
    same_step = _write_metrics(tmp_path / "e.jsonl", [
        {"step": 20, "loss": 2.0}, {"step": 20, "eval/loss": 2.2}])
    assert {k: v[1].tolist() for k, v in read_metrics(same_step).items()} == {
        "loss": [2.0], "eval/loss": [2.2]}  # eval rows logged at the same step merge


def test_log_y_choice():
    assert use_log_y(np.array([5.0, 1.0, 0.5]))
    assert not use_log_y(np.array([5.0, 4.0, 3.0]))  # under a factor 5: linear reads better
    assert not use_log_y(np.array([5.0, -1.0, 0.01]))
    assert not use_log_y(np.array([1.0]))


def test_wav_round_trip():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, np.nan], np.float32)
    with wave.open(io.BytesIO(wav_bytes(x))) as w:
        assert w.getframerate() == SR and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    ref = np.round(np.clip(np.nan_to_num(x.astype(np.float64)), -1, 1) * 32767).astype(np.int16)
    np.testing.assert_array_equal(pcm, ref)


@pytest.mark.parametrize("freq", [261.6, 440.0, 1046.5])
def test_spectrogram_shows_the_pitch(freq):
    spec = spectrogram_rgb(_sine(freq), SR).astype(np.float64).sum(-1)  # magma: brighter = louder
    assert spec.shape[0] == int(2000 * 512 / SR) + 1
    row = spec.shape[0] - 1 - int(np.argmax(spec.mean(1)))  # row 0 is the top (high frequency)
    assert abs(row - freq * 512 / SR) <= 1.0
    assert spectrogram_rgb(np.zeros(SR), SR).max() < 10  # silence stays dark
