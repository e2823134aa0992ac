"""The VAE tasks' training stream: examples of one modality, sharded by process, resumable, with
bad examples skipped (and counted) or stopping the run, by ``data.bad_input``.

The examples form one global stream: position k is example ``k mod N`` of the dataset (N examples;
through a fresh permutation per epoch ``k div N`` when shuffled). Process p reads the positions
``k ≡ p (mod process_count)``, in order, and keeps the first B/P usable ones for each batch; an
unusable example (:class:`BadInput`) is skipped and the process reads on along its own positions.
Without bad examples global step s is positions [s·B, (s+1)·B), the processes' rows together form
it, and nothing depends on timing: each process's stream is a function of the dataset, the seed
and its index, so the split is deterministic and the state (this process's next position, and the
batches made) resumes it exactly.

Reading ahead (``data.prefetch``, ``data.num_workers``). With ``prefetch = k ≥ 1`` a background
producer thread makes the batches and keeps up to k of them ready ahead of the trainer; with
``num_workers = n ≥ 1`` the examples of a batch are read (``dataset[i]``: file reads, PNG/WAV
decoding, resizing) by n reader threads in parallel, ``0`` = in the producer itself. Threads, not
processes: Pillow's decoders and resizing, soundfile and NumPy release the GIL for most of their
work, so the readers overlap; Python-bound work in a source (JSON parsing, the built-in data's
drawing of tiny arrays) does not. Neither changes a batch: the producer takes the readers' results
in stream order and applies the skip rules above to them exactly as a direct reader would (a
:class:`BadInput` is handed to the policy in order; a :class:`DataError`, or any other error of the
dataset, is raised by ``next()`` at the batch it belongs to, after the batches before it, as the
same exception), so the batches, their skip counts and the state are the same for every
``prefetch`` / ``num_workers``. A batch's skip counts are the skips made while making it (a batch
that ends in an error keeps none: they are counted again if it is read again). The state describes
the batches handed out, not what was read ahead; ``set_state`` drops the read-ahead. The threads
are daemons and stop on ``close()`` or when the iterator is garbage-collected.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any

import numpy as np

from latentlm_jax.data.bad_input import (
    SKIP_COUNTS_KEY,
    BadInput,
    BadInputPolicy,
    DataError,
    skip_summary,
)


class ExampleIterator:
    """Yields ``{key: [B_local, ...], "step": int32[B_local]}`` batches of one modality, plus
    ``"_skipped_counts"`` (``{"data/skipped/<reason>": n}``) when examples were skipped since
    the previous batch (the trainer pops it: ``bad_input.pop_skip_counts``).

    ``step`` (the global step the batch is for) lets the loss switch terms on at a given step
    without the trainer passing it in. ``policy`` decides what a :class:`BadInput` from the
    dataset does (default: raise a :class:`DataError`); ``shuffle_seed`` (None = dataset order)
    permutes each epoch. ``prefetch`` (batches made ahead by a background thread; 0 = made in
    ``next()``) and ``num_workers`` (reader threads per batch; 0 = read where the batch is made)
    change only the timing, never the batches (module docstring). ``close()`` stops the threads
    (a later ``next()`` starts them again); so does garbage collection.
    """

    def __init__(self, dataset: Sequence[dict[str, Any]], key: str, global_batch: int,
                 process_index: int = 0, process_count: int = 1, dtype: Any = None, *,
                 policy: BadInputPolicy | None = None, shuffle_seed: int | None = None,
                 prefetch: int = 0, num_workers: int = 0):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} does not split over "
                             f"{process_count} processes")
        if len(dataset) == 0:
            raise ValueError("the dataset has no examples")
        if prefetch < 0 or num_workers < 0:
            raise ValueError(f"prefetch and num_workers must be ≥ 0, got {prefetch} and "
                             f"{num_workers}")
        self.dataset, self.key, self.dtype = dataset, key, dtype
        self.global_batch = global_batch
        self.process_index, self.process_count = process_index, process_count
        self.policy = BadInputPolicy("error") if policy is None else policy
        self.shuffle_seed = shuffle_seed
        self.prefetch, self.num_workers = int(prefetch), int(num_workers)
        self.next_index = 0  # global position at which this process's next row starts (≡ 0 mod P)
        self.batches = 0
        self._maker = _BatchMaker(dataset, key, dtype, global_batch // process_count,
                                  process_index, process_count, self.policy, shuffle_seed)
        # The threads live in an object that does not refer back to this iterator, so that the
        # iterator can be collected while they run; collecting it stops them.
        self._threads = _Threads(self._maker, self.prefetch, self.num_workers)
        self._finalizer = weakref.finalize(self, self._threads.close, False)

    def __iter__(self) -> ExampleIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.prefetch == 0:
            batch, self.next_index = self._maker.make(self.next_index, self.batches,
                                                      self._threads.readers())
            self.batches += 1
            return batch
        item = self._threads.producer(self.next_index, self.batches).get()
        if isinstance(item, BaseException):
            self._threads.stop()  # it has ended; the next call starts again from here
            raise item
        batch, self.next_index, self.batches = item
        return batch

    def get_state(self) -> dict[str, int]:
        """The position after the last batch ``next()`` returned (not the read-ahead)."""
        return {"next_index": self.next_index, "batches": self.batches}

    def set_state(self, state: dict[str, int]) -> None:
        """Continue from ``state``: what was read ahead is dropped and, with ``prefetch``, the
        producer starts reading from there."""
        self._threads.stop()
        self.next_index = int(state["next_index"])
        # States saved before bad examples could be skipped hold only next_index = step · B.
        self.batches = int(state.get("batches", self.next_index // self.global_batch))
        if self.prefetch:
            self._threads.producer(self.next_index, self.batches)

    def close(self) -> None:
        """Stop the producer and reader threads (waiting for an example being read)."""
        self._threads.close(True)


class _BatchMaker:
    """Makes one batch from a position: the reading and skip rules of the module docstring.
    Used by one thread at a time (it caches the epoch's permutation)."""

    def __init__(self, dataset: Sequence[dict[str, Any]], key: str, dtype: Any, rows: int,
                 process_index: int, process_count: int, policy: BadInputPolicy,
                 shuffle_seed: int | None):
        self.dataset, self.key, self.dtype, self.rows = dataset, key, dtype, rows
        self.process_index, self.process_count = process_index, process_count
        self.policy, self.shuffle_seed = policy, shuffle_seed
        self._perm_epoch, self._perm = -1, None
        # Skips the policy counted in batches never handed out (read ahead and dropped, or
        # not made: an error): not what this stream skipped (the "no usable" message's totals).
        self.discarded: dict[str, int] = {}

    def dataset_index(self, position: int) -> int:
        epoch, i = divmod(position, len(self.dataset))
        if self.shuffle_seed is None:
            return i
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.shuffle_seed, epoch])
            self._perm, self._perm_epoch = rng.permutation(len(self.dataset)), epoch
        return int(self._perm[i])

    def make(self, next_index: int, batches: int, readers: _Readers | None = None,
             stopped: Callable[[], bool] | None = None) -> tuple[dict[str, Any], int]:
        """The batch that starts at ``next_index`` (the ``batches``-th), and the next position.
        ``readers`` read the examples in parallel (taken in order); ``stopped`` is polled
        between examples (:class:`_Stopped` when it turns true)."""
        try:
            return self._make(next_index, batches, readers, stopped)
        except BaseException:
            # A batch's skip counts are the skips made while making it: those of a batch that
            # was not made are dropped (counted again if it is made on another try).
            _add_counts(self.discarded, self.policy.drain())
            raise

    def _make(self, next_index: int, batches: int, readers: _Readers | None,
              stopped: Callable[[], bool] | None) -> tuple[dict[str, Any], int]:
        position = next_index + self.process_index
        values: list[np.ndarray] = []
        misses = 0
        while len(values) < self.rows:
            # Direct: one example at a time. With readers: the examples this batch still needs,
            # read at once and taken in order; after a bad example, at least one per reader
            # (what lies past the batch's last row is then read for nothing, and dropped).
            wanted = self.rows - len(values)
            if readers is not None and position != next_index + self.process_index:
                wanted = max(wanted, readers.count)
            indices = [self.dataset_index(position + j * self.process_count)
                       for j in range(wanted)]
            futures = readers.submit(indices) if readers is not None else None
            try:
                for j, i in enumerate(indices):
                    if len(values) == self.rows:
                        break
                    if stopped is not None and stopped():
                        raise _Stopped
                    position += self.process_count
                    try:
                        example = futures[j].result() if futures is not None else self.dataset[i]
                    except BadInput as exc:
                        self.policy.handle(exc, exc.where or f"example:{i}")  # raises, "error"
                        misses += 1
                        if misses >= len(self.dataset):
                            raise DataError(
                                f"no usable {self.key} in {misses} examples read in a row by "
                                f"process {self.process_index} "
                                f"({skip_summary(self._skipped())})") from exc
                        continue
                    misses = 0
                    values.append(np.asarray(example[self.key], self.dtype))
            finally:
                if futures is not None:
                    for f in futures:
                        f.cancel()
        batch: dict[str, Any] = {
            self.key: np.stack(values),
            "step": np.full((self.rows,), batches, np.int32),
        }
        counts = self.policy.drain()
        if counts:
            batch[SKIP_COUNTS_KEY] = counts
        return batch, position - self.process_index

    def _skipped(self) -> dict[str, int]:
        counts = {k: n - self.discarded.get(k, 0) for k, n in self.policy.counts().items()}
        return {k: n for k, n in counts.items() if n}


class _Stopped(Exception):
    """The producer was asked to stop in the middle of a batch."""


def _add_counts(total: dict[str, int], counts: Mapping[str, int]) -> None:
    for k, n in counts.items():
        total[k] = total.get(k, 0) + int(n)


class _Readers:
    """``count`` daemon threads that read ``dataset[i]`` (the parallel readers)."""

    def __init__(self, dataset: Sequence[dict[str, Any]], count: int):
        self.count = count
        self._tasks: SimpleQueue = SimpleQueue()
        self._threads = [threading.Thread(target=_read_examples, args=(dataset, self._tasks),
                                          name=f"vae-stream-reader-{k}", daemon=True)
                         for k in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, indices: list[int]) -> list[Future]:
        futures = [Future() for _ in indices]
        for f, i in zip(futures, indices, strict=True):
            self._tasks.put((f, i))
        return futures

    def close(self, wait: bool) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for t in self._threads:
                t.join()


def _read_examples(dataset: Sequence[dict[str, Any]], tasks: SimpleQueue) -> None:
    while (task := tasks.get()) is not None:
        future, index = task
        del task
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(dataset[index])
            except BaseException as exc:  # noqa: BLE001 -- handed to the producer as it is
                future.set_exception(exc)
        del future


class _Producer:
    """A daemon thread making batches from a position into a buffer of at most ``depth``; an
    exception ends it, as the buffer's last item."""

    def __init__(self, maker: _BatchMaker, readers: _Readers | None, depth: int,
                 next_index: int, batches: int):
        self._maker, self._readers, self._depth = maker, readers, depth
        self._cond = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(next_index, batches),
                                        name="vae-stream-producer", daemon=True)
        self._thread.start()

    def _stopped(self) -> bool:
        return self._stop

    def _run(self, next_index: int, batches: int) -> None:
        try:
            while True:
                batch, next_index = self._maker.make(next_index, batches, self._readers,
                                                     self._stopped)
                batches += 1
                with self._cond:
                    while len(self._items) >= self._depth and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        _add_counts(self._maker.discarded, batch.get(SKIP_COUNTS_KEY, {}))
                        return
                    self._items.append((batch, next_index, batches))
                    self._cond.notify_all()
                del batch
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 -- re-raised by next() at its batch
            with self._cond:
                self._items.append(exc)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self) -> Any:
        """The next item: ``(batch, next_index, batches)`` or the exception that ended it."""
        with self._cond:
            while not self._items and not self._done:
                self._cond.wait()
            if not self._items:
                raise RuntimeError("the σ-VAE data producer thread ended without a batch")
            item = self._items.popleft()
            self._cond.notify_all()
        return item

    def stop(self, wait: bool) -> dict[str, int]:
        """Stop it; with ``wait``, once it has ended, the skip counts of the batches it made
        that were never handed out."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if not wait:
            return {}
        self._thread.join()
        discarded: dict[str, int] = {}
        for item in self._items:
            if not isinstance(item, BaseException):
                _add_counts(discarded, item[0].get(SKIP_COUNTS_KEY, {}))
        self._items.clear()
        return discarded


class _Threads:
    """An iterator's producer and readers, started on demand."""

    def __init__(self, maker: _BatchMaker, prefetch: int, num_workers: int):
        self._maker, self._prefetch, self._num_workers = maker, prefetch, num_workers
        self._producer: _Producer | None = None
        self._readers: _Readers | None = None
        self._lock = threading.Lock()

    def readers(self) -> _Readers | None:
        if self._num_workers and self._readers is None:
            self._readers = _Readers(self._maker.dataset, self._num_workers)
        return self._readers

    def producer(self, next_index: int, batches: int) -> _Producer:
        """The running producer, or a new one that starts at ``next_index``."""
        with self._lock:
            if self._producer is None:
                self._producer = _Producer(self._maker, self.readers(), self._prefetch,
                                           next_index, batches)
            return self._producer

    def stop(self) -> None:
        """Stop the producer and wait for it; its read-ahead no longer counts as skipped."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            _add_counts(self._maker.discarded, producer.stop(wait=True))

    def close(self, wait: bool) -> None:
        if wait:
            self.stop()
        else:
            with self._lock:
                producer, self._producer = self._producer, None
            if producer is not None:
                producer.stop(wait=False)
        with self._lock:
            readers, self._readers = self._readers, None
        if readers is not None:
            readers.close(wait)
