"""The bad-input policy: skip (count, log once per reason, None) or error (one-line DataError)."""

from __future__ import annotations

import json
import logging
import pickle

import grain
import numpy as np
import pytest
import soundfile as sf
from absl import flags
from PIL import Image

from latentlm_jax.data.bad_input import (
    SKIP_COUNTS_KEY,
    BadInput,
    BadInputPolicy,
    DataError,
    SkippingSource,
    SkipTotals,
    attach_skip_counts,
    describe_where,
    pop_skip_counts,
)
from latentlm_jax.data.manifest import ManifestSource

LOGGER = "latentlm_jax.data.bad_input"


@pytest.fixture
def bad_manifest(tmp_path):
    """A manifest with two good lines and each kind of bad line twice.

    Returns (path, {line number: (reason, offending media file or None)}, good line numbers).
    """
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    sf.write(tmp_path / "ok.wav", np.zeros(800, np.float32), 8000)
    wav = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "trunc.wav").write_bytes(wav[: len(wav) - 400])
    good = json.dumps({"text": "fine", "image": "ok.png", "audio": "ok.wav"}).encode()
    bad = {
        "missing_file": (json.dumps({"image": "gone.png"}).encode(), "gone.png"),
        "corrupt_image": (json.dumps({"image": "corrupt.png"}).encode(), "corrupt.png"),
        "corrupt_audio": (json.dumps({"audio": "trunc.wav"}).encode(), "trunc.wav"),
        "empty_text": (json.dumps({"text": "   "}).encode(), None),
        "invalid_utf8": (b'{"text": "caf\xe9"}', None),
        "bad_json": (b'{"text": "unterminated', None),
        "missing_keys": (json.dumps({"caption": "wrong key"}).encode(), None),
    }
    lines, expected, good_lines = [good], {}, [1]
    for _ in range(2):
        for reason, (line, file) in bad.items():
            lines.append(line)
            expected[len(lines)] = (reason, str(tmp_path / file) if file else None)
    lines.append(good)
    good_lines.append(len(lines))
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), expected, good_lines


def _source(path):
    return ManifestSource(path, image_resolution=8, sample_rate=8000, num_samples=800)


def test_skip_counts_returns_none_and_logs_once_per_reason(bad_manifest, caplog):
    path, expected, good_lines = bad_manifest
    policy = BadInputPolicy("skip")
    src = SkippingSource(_source(path), policy)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    out = [src[i] for i in range(len(src))]

    assert [i + 1 for i, x in enumerate(out) if x is not None] == good_lines
    assert all(out[line - 1] is None for line in expected)
    reasons = [r for r, _ in expected.values()]
    want = {f"data/skipped/{r}": reasons.count(r) for r in set(reasons)}
    assert policy.counts() == want and all(n == 2 for n in want.values())

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(set(reasons))  # once per reason, not once per example
    for reason in set(reasons):
        (msg,) = [m for m in warnings if f"({reason})" in m]
        line = min(n for n, (r, _) in expected.items() if r == reason)  # the first occurrence
        assert f"manifest {path} line {line}" in msg
        file = expected[line][1]
        if file:
            assert file in msg


def test_error_mode_names_reason_file_and_line(bad_manifest):
    path, expected, good_lines = bad_manifest
    src = SkippingSource(_source(path), BadInputPolicy("error"))
    assert src[good_lines[0] - 1]["text"] == "fine"
    for line, (reason, file) in expected.items():
        with pytest.raises(DataError) as e:
            src[line - 1]
        msg = str(e.value)
        assert "\n" not in msg
        assert f"({reason})" in msg and f"manifest {path} line {line}" in msg
        if file:
            assert f"file {file}" in msg
        assert isinstance(e.value.__cause__, BadInput)


def test_policy_basics():
    with pytest.raises(ValueError, match="skip"):
        BadInputPolicy("ignore")
    p = BadInputPolicy("skip")
    assert p.handle(BadInput("too_long", "300 tokens > seq_len 128"), "manifest:/m.jsonl:4") is None
    p.handle(BadInput("too_long", "again"))
    p.handle(BadInput("empty_text", "x"))
    assert p.drain() == {"data/skipped/empty_text": 1, "data/skipped/too_long": 2}
    assert p.drain() == {}
    p.handle(BadInput("too_long", "third"))
    assert p.counts() == {"data/skipped/empty_text": 1, "data/skipped/too_long": 3}
    assert p.drain() == {"data/skipped/too_long": 1}

    clone = pickle.loads(pickle.dumps(p))  # what a Grain worker receives
    clone.handle(BadInput("too_long", "in a worker"))
    assert clone.counts()["data/skipped/too_long"] == 4 and p.counts()["data/skipped/too_long"] == 3
    e = pickle.loads(pickle.dumps(BadInput("corrupt_image", "d", file="/a.png", where="w:1")))
    assert (e.reason, e.detail, e.file, e.where) == ("corrupt_image", "d", "/a.png", "w:1")

    assert describe_where("manifest:/d/m.jsonl:12") == "manifest /d/m.jsonl line 12"
    assert describe_where("array_record:/d/s-0.ar:5") == "array_record /d/s-0.ar record 5"

    pattern = r"^bad input \(too_long\) at manifest /m.jsonl line 4: 300"
    with pytest.raises(DataError, match=pattern):
        BadInputPolicy("error").handle(BadInput("too_long", "300 tokens"), "manifest:/m.jsonl:4")


def test_counts_travel_with_batches():
    p = BadInputPolicy("skip")
    p.handle(BadInput("corrupt_image", "a"))
    p.handle(BadInput("corrupt_image", "b"))
    b1 = attach_skip_counts({"tokens": np.zeros((2, 4))}, p)
    p.handle(BadInput("bad_json", "c"))
    b2 = attach_skip_counts({"tokens": np.zeros((2, 4))}, p)
    b3 = attach_skip_counts({"tokens": np.zeros((2, 4))}, p)
    totals = SkipTotals()
    for b in (b1, b2, b3):
        totals.add(pop_skip_counts(b))
        assert SKIP_COUNTS_KEY not in b and set(b) == {"tokens"}
    assert totals.as_metrics() == {"data/skipped/bad_json": 1, "data/skipped/corrupt_image": 2}
    assert pop_skip_counts({"tokens": 0}) == {}


class _Flaky:
    """Every third example is bad."""

    def __len__(self):
        return 30

    def __getitem__(self, i):
        if i % 3 == 2:
            raise BadInput("corrupt_image", f"example {i}", where=f"toy:/toy:{i}")
        return np.int32(i)


def test_grain_filter_drops_skipped_examples():
    policy = BadInputPolicy("skip")
    ds = grain.MapDataset.source(SkippingSource(_Flaky(), policy)).filter(lambda x: x is not None)
    got = list(ds.to_iter_dataset())
    assert [int(x) for x in got] == [i for i in range(30) if i % 3 != 2]
    assert policy.counts() == {"data/skipped/corrupt_image": 10}


class _Attach:
    def __init__(self, policy):
        self.policy = policy

    def __call__(self, batch):
        return attach_skip_counts({"x": batch}, self.policy)


def test_counts_from_grain_worker_processes_reach_the_main_process():
    if not flags.FLAGS.is_parsed():  # Grain's worker code reads absl flags
        flags.FLAGS.mark_as_parsed()
    policy = BadInputPolicy("skip")
    ds = grain.MapDataset.source(SkippingSource(_Flaky(), policy)).to_iter_dataset()
    ds = ds.batch(4).map(_Attach(policy))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    totals, seen = SkipTotals(), []
    for batch in ds:
        totals.add(pop_skip_counts(batch))
        seen.extend(batch["x"].tolist())
    assert sorted(seen) == [i for i in range(30) if i % 3 != 2]
    assert totals.as_metrics() == {"data/skipped/corrupt_image": 10}
    assert policy.counts() == {}  # all the counting happened in the workers
