"""Pre-encoded latents in ArrayRecord shards: write, read back over several shards, bad records."""

from __future__ import annotations

import pickle

import grain
import msgpack
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from latentlm_jax.data.array_record_source import (
    LatentArrayRecordSource,
    decode_record,
    encode_record,
    write_latents,
)
from latentlm_jax.data.bad_input import BadInput, BadInputPolicy, SkippingSource


def _records(start: int, n: int) -> list[dict]:
    out = []
    for k in range(start, start + n):
        rng = np.random.default_rng(k)
        image = k % 2 == 0
        out.append(
            {
                "latents": rng.standard_normal((16 if image else 5 + k, 8)).astype(np.float32),
                "caption": f"caption {k} ü" if k != 3 else "",
                "modality": "image" if image else "audio",
                "height": 4,
                "width": 4,
                "label": np.int64(k),
            }
        )
    return out


def _check(got: dict, want: dict, atol: float = 0.0) -> None:
    assert got["latents"].dtype == np.float32 and got["latents"].shape == want["latents"].shape
    np.testing.assert_allclose(got["latents"], want["latents"], atol=atol, rtol=0)
    for key in ("caption", "modality", "height", "width", "label"):
        value = want[key].item() if isinstance(want[key], np.generic) else want[key]
        assert got[key] == value and type(got[key]) is type(value)


def test_round_trip_over_two_shards(tmp_path):
    a, b = _records(0, 5), _records(5, 3)
    pa, pb = str(tmp_path / "lat-00000.array_record"), str(tmp_path / "lat-00001.array_record")
    assert write_latents(pa, a) == 5 and write_latents(pb, b, dtype="float16") == 3
    src = LatentArrayRecordSource([pa, pb])
    assert len(src) == 8
    for i, want in enumerate(a):
        _check(src[i], want)
        assert src[i]["source"] == f"array_record:{pa}:{i}"
    for j, want in enumerate(b):
        _check(src[5 + j], want, atol=2e-3)  # float16 storage
        assert src[5 + j]["source"] == f"array_record:{pb}:{j}"
    assert src[-1]["source"] == src[7]["source"]
    with pytest.raises(IndexError):
        src[8]
    by_glob = LatentArrayRecordSource(str(tmp_path / "lat-*.array_record"))
    assert by_glob.paths == src.paths
    clone = pickle.loads(pickle.dumps(src))  # what a Grain worker gets
    np.testing.assert_array_equal(clone[6]["latents"], src[6]["latents"])
    got = list(grain.MapDataset.source(src).to_iter_dataset())
    assert [r["source"] for r in got] == [src[i]["source"] for i in range(8)]


def test_encoding_is_compact_and_pickle_free():
    rec = _records(0, 1)[0]
    data = encode_record(rec)
    assert len(data) - rec["latents"].nbytes < 100
    raw = msgpack.unpackb(data, raw=False)  # plain msgpack: an extension type, no code
    assert raw["caption"] == rec["caption"] and raw["latents"].code == 1
    back = decode_record(data)
    assert back["latents"].flags.writeable
    np.testing.assert_array_equal(back["latents"], rec["latents"])


@pytest.mark.parametrize(
    "change,error",
    [
        ({"latents": np.zeros((2, 3, 4), np.float32)}, "latents must be"),
        ({"latents": np.zeros((2, 3), np.int32)}, "latents must be"),
        ({"latents": np.full((2, 3), np.nan, np.float32)}, "NaN"),
        ({"modality": "video"}, "modality"),
        ({"caption": 5}, "caption"),
        ({"extra": [1, 2]}, "only scalars"),
    ],
)
def test_invalid_records_are_rejected_on_write(change, error):
    rec = {**_records(0, 1)[0], **change}
    with pytest.raises((ValueError, TypeError), match=error):
        encode_record(rec)


def test_missing_fields_and_dtype():
    rec = _records(0, 1)[0]
    for key in ("latents", "caption", "modality"):
        with pytest.raises(ValueError, match=key):
            encode_record({k: v for k, v in rec.items() if k != key})
    with pytest.raises(ValueError, match="dtype"):
        encode_record(rec, dtype="int8")


def test_corrupt_record_and_missing_shard(tmp_path):
    path = str(tmp_path / "mixed.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    writer.write(encode_record(_records(0, 1)[0]))
    writer.write(b"\x93not a latent record")
    writer.write(msgpack.packb({"latents": "text"}))
    writer.close()
    src = LatentArrayRecordSource(path)
    assert src[0]["modality"] == "image"
    for i in (1, 2):
        with pytest.raises(BadInput) as e:
            src[i]
        assert e.value.reason == "corrupt_record" and e.value.file == path
        assert e.value.where == f"array_record:{path}:{i}"
    policy = BadInputPolicy("skip")
    kept = list(grain.MapDataset.source(SkippingSource(src, policy)).to_iter_dataset())
    assert len(kept) == 1 and policy.counts() == {"data/skipped/corrupt_record": 2}

    with pytest.raises(FileNotFoundError):
        LatentArrayRecordSource([path, str(tmp_path / "nope.array_record")])
    with pytest.raises(FileNotFoundError):
        LatentArrayRecordSource(str(tmp_path / "none-*.array_record"))
    (tmp_path / "junk.array_record").write_bytes(b"junk" * 20)
    with pytest.raises(ValueError, match="not a readable ArrayRecord"):
        LatentArrayRecordSource(str(tmp_path / "junk.array_record"))
