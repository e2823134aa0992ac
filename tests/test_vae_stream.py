"""The σ-VAE training stream's read-ahead (``data.prefetch``) and parallel readers
(``data.num_workers``): same batches, skip counts, errors and resumption as a direct reader, and
actual overlap."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref

import numpy as np
import pytest

from latentlm_jax.data.bad_input import (
    SKIP_COUNTS_KEY,
    BadInput,
    BadInputPolicy,
    DataError,
    NotApplicable,
)
from latentlm_jax.vae.data import ExampleIterator
from tests.helpers import tiny_vae_config

SETTINGS = [(1, 0), (2, 0), (3, 2)]  # (prefetch, num_workers)
BAD = {1, 4, 5, 11, 17, 18, 19, 30, 31, 33}
OTHER = {8, 24}  # NotApplicable: counted under their own reason, never an error


class Fake:
    """Example ``i`` has pixels all equal to ``i``; ``bad`` raise BadInput, ``other``
    NotApplicable; ``delay`` seconds of sleep per read. Counts reads (thread-safe)."""

    def __init__(self, n: int, bad=(), other=(), delay: float = 0.0):
        self.n, self.bad, self.other, self.delay = n, set(bad), set(other), delay
        self.reads = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        with self._lock:
            self.reads += 1
        if self.delay:
            time.sleep(self.delay)
        if i in self.bad:
            raise BadInput("corrupt_image", "broken", where=f"fake:/d/m.jsonl:{i}")
        if i in self.other:
            raise NotApplicable("no_image", "audio only", where=f"fake:/d/m.jsonl:{i}")
        return {"image": np.full((2, 2, 3), i, np.uint8)}


def stream(data, prefetch=0, num_workers=0, mode="skip", **kw) -> ExampleIterator:
    kw = {"process_index": 1, "process_count": 2, "shuffle_seed": 7, **kw}
    return ExampleIterator(data, "image", kw.pop("global_batch", 8), kw.pop("process_index"),
                           kw.pop("process_count"), policy=BadInputPolicy(mode),
                           prefetch=prefetch, num_workers=num_workers, **kw)


def take(it, n: int) -> list[tuple[dict, dict]]:
    return [(next(it), it.get_state()) for _ in range(n)]


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for (b, s), (rb, rs) in zip(got, want, strict=True):
        assert s == rs
        assert set(b) == set(rb)
        assert np.array_equal(b["image"], rb["image"]) and b["image"].dtype == rb["image"].dtype
        assert np.array_equal(b["step"], rb["step"])
        assert b.get(SKIP_COUNTS_KEY) == rb.get(SKIP_COUNTS_KEY)


def stream_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("vae-stream-")}


def reads_of(data: Fake, batches: int, **kw) -> int:
    """How many examples a direct reader reads for its first ``batches`` batches."""
    copy = Fake(data.n, data.bad, data.other)
    take(stream(copy, **kw), batches)
    return copy.reads


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("prefetch,num_workers", [*SETTINGS, (0, 3), (1, 6)])  # 6 > 4 rows
def test_same_batches_as_a_direct_reader(prefetch, num_workers):
    data = Fake(37, BAD, OTHER)  # 37 examples, 4 rows a batch: epochs end mid-batch
    want = take(stream(data), 12)
    assert sum(SKIP_COUNTS_KEY in b for b, _ in want) >= 3  # the case is exercised
    it = stream(data, prefetch, num_workers)
    assert_same(take(it, 12), want)
    it.close()


@pytest.mark.parametrize("prefetch,num_workers", SETTINGS)
def test_state_is_what_was_handed_out_and_resumes_exactly(prefetch, num_workers):
    data = Fake(37, BAD, OTHER)
    ref = stream(data)
    want = take(ref, 9)
    data.reads = 0
    it = stream(data, prefetch, num_workers)
    assert_same(take(it, 3), want[:3])
    ahead = reads_of(data, 3 + prefetch)
    wait_for(lambda: data.reads >= ahead)  # the producer reads ahead ...
    state = json.loads(json.dumps(it.get_state()))  # ... but the state is after batch 3
    assert state == want[2][1]

    fresh = stream(data, prefetch, num_workers)
    fresh.set_state(state)
    assert_same(take(fresh, 6), want[3:])
    assert_same(take(it, 6), want[3:])  # continuing gives the same
    it.set_state(want[4][1])  # rewinding drops the read-ahead, skip counts included
    assert_same(take(it, 4), want[5:])
    # an old state (next_index only) still resumes a stream without skips
    clean, clean_ref = stream(Fake(40), prefetch, num_workers), stream(Fake(40))
    take(clean_ref, 2)
    clean.set_state({"next_index": 16})
    assert_same(take(clean, 2), take(clean_ref, 2))
    for i in (it, fresh, clean):
        i.close()


@pytest.mark.parametrize("prefetch,num_workers", SETTINGS)
def test_error_surfaces_at_its_batch(prefetch, num_workers):
    data = Fake(40, {29}, {3})  # process 1, 4 rows: 1 5 7 9 | … | 27 29: batch 3
    ref = stream(data, mode="error", shuffle_seed=None)
    want = take(ref, 3)
    with pytest.raises(DataError) as ref_err:
        next(ref)
    it = stream(data, prefetch, num_workers, mode="error", shuffle_seed=None)
    assert_same(take(it, 3), want)
    for _ in range(2):  # again on a second try, like a direct reader
        with pytest.raises(DataError) as err:
            next(it)
        assert type(err.value) is DataError and str(err.value) == str(ref_err.value)
        assert "record 29" in str(err.value) and isinstance(err.value.__cause__, BadInput)
        assert it.get_state() == want[-1][1]
    it.close()

    # "no usable example" (here: the files went bad during the run): the same message, whose
    # totals are the skips of the batches handed out and of this one, not of the read-ahead
    def fails(it):
        with pytest.raises(DataError) as err:
            next(it)
        return str(err.value)

    flaky, ref = Fake(6, {3}), None  # 2 rows: 0 1 | 2 (3) 4 | 5 0 | 1 2 | (3) 4 5 | ...
    for ahead, workers in [(0, 0), (prefetch, num_workers)]:
        flaky.bad, flaky.reads = {3}, 0
        kw = {"global_batch": 2, "process_count": 1, "process_index": 0, "shuffle_seed": None}
        it = stream(flaky, ahead, workers, **kw)
        take(it, 2)
        wanted = reads_of(flaky, 2 + ahead, **kw)  # 2 batches handed out, `ahead` ready
        wait_for(lambda wanted=wanted: flaky.reads >= wanted)
        flaky.bad = set(range(6))
        it.set_state(it.get_state())  # drops what was read ahead
        message = fails(it)
        assert fails(it) == message  # a second try: the failed batch's skips are not kept
        assert message.endswith("no usable image in 6 examples read in a row by process 0 "
                                "(skipped 7 (corrupt_image))")
        ref = ref or message
        assert message == ref
        it.close()


def test_prefetch_overlaps_reading_with_the_consumer():
    delay, consume, steps = 0.01, 0.06, 10  # 4 rows × 10 ms to read, 60 ms to "train"
    it = stream(Fake(200, delay=delay), prefetch=2, shuffle_seed=None)
    waited = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        next(it)
        waited += time.perf_counter() - t0
        time.sleep(consume)
    reading = steps * 4 * delay  # ≥ 0.4 s of reads, of which only the first batch is waited for
    assert waited < 0.5 * reading, (waited, reading)
    it.close()


def test_parallel_readers_read_a_batch_at_once():
    def timed(num_workers):
        it = stream(Fake(200, delay=0.02), prefetch=1, num_workers=num_workers,
                    global_batch=16, shuffle_seed=None)
        t0 = time.perf_counter()
        take(it, 3)
        it.close()
        return time.perf_counter() - t0

    serial, parallel = timed(0), timed(8)  # 24 reads of 20 ms: ≈ 0.48 s, ≈ 0.06 s
    assert parallel < 0.5 * serial, (parallel, serial)


def test_threads_are_daemons_and_stop_on_close_and_collection():
    before = stream_threads()
    it = stream(Fake(40), prefetch=2, num_workers=2)
    next(it)
    mine = stream_threads() - before
    assert len(mine) == 3 and all(t.daemon for t in mine)  # the producer and 2 readers
    it.close()
    for t in mine:
        t.join(5)
    assert not any(t.is_alive() for t in mine)
    next(it)  # usable again after close
    mine = stream_threads() - before
    ref = weakref.ref(it)
    del it
    gc.collect()
    assert ref() is None  # the threads do not keep the iterator alive ...
    for t in mine:  # ... and stop with it
        t.join(5)
    assert not any(t.is_alive() for t in mine)


def test_task_passes_prefetch_and_num_workers():
    from latentlm_jax.vae.task import ImageVAETask

    c = tiny_vae_config("vae_image")
    want = [next(it) for it in [ImageVAETask().train_iterator(c, 0, 1)] for _ in range(3)]
    c.data.prefetch, c.data.num_workers = 3, 2
    it = ImageVAETask().train_iterator(c, 0, 1)
    assert (it.prefetch, it.num_workers) == (3, 2)
    for w in want:
        b = next(it)
        assert np.array_equal(b["image"], w["image"]) and np.array_equal(b["step"], w["step"])
    it.close()
    with pytest.raises(ValueError, match="≥ 0"):
        ExampleIterator(Fake(4), "image", 2, prefetch=-1)
