"""Metrics sinks: ``metrics.jsonl`` (one JSON object per log step), TensorBoard events, console.

Both files go through :mod:`latentlm_jax.paths`, so a ``gs://`` workdir gets them in the bucket. An
object in a bucket cannot be appended to: there ``metrics.jsonl`` (its earlier rows read back when a
run resumes) and the TensorBoard event file are rewritten whole at most every ``URL_FLUSH_SECS``
and when the writer closes, so a hard kill loses at most that much of the log. Locally a hard kill
may leave half a row at the end of the file; the next writer truncates it away before appending.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import jax
import numpy as np

from latentlm_jax import paths

URL_FLUSH_SECS = 30.0


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    return v.item() if v.size == 1 else float(v.mean())


class _WholeObjectWriter:
    """A tensorboardX record-file writer for URLs: buffers the event file and rewrites the
    object whole on flush (through the path layer, so the same credentials as everything else)."""

    def __init__(self, path: str):
        self.path, self._buffer, self._uploaded = path, io.BytesIO(), -1

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        if self._buffer.tell() != self._uploaded:  # tensorboardX flushes on a timer
            paths.write_bytes(self.path, self._buffer.getvalue())
            self._uploaded = self._buffer.tell()

    def close(self) -> None:
        self.flush()


class _WholeObjectFactory:
    def open(self, path: str) -> _WholeObjectWriter:
        return _WholeObjectWriter(path)

    def directory_check(self, path: str) -> None:
        paths.makedirs(path)


def _register_url_writers(scheme: str) -> None:
    """Routes tensorboardX's event files for ``scheme://`` through the path layer (replacing its
    own ``gs`` writer, which reaches Google Cloud Storage through another client library)."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _WholeObjectFactory())


class MetricsWriter:
    """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/ (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._file = None
        self._url = paths.is_url(workdir)
        self._path = paths.join(workdir, "metrics.jsonl")
        self._rows: list[str] = []  # URL: the whole object, rewritten on flush
        self._flushed_at = time.monotonic()
        if self.enabled:
            paths.makedirs(workdir)
            if self._url:
                if paths.exists(self._path):  # a resumed run keeps the earlier, whole rows
                    self._rows = complete_lines(paths.read_text(self._path))
                _register_url_writers(str(self._path).split("://", 1)[0])
            else:
                drop_partial_line(self._path)
                self._file = paths.open_file(  # noqa: SIM115 - kept open for the run
                    self._path, "a")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(paths.join(workdir, "tensorboard")),
                                     flush_secs=URL_FLUSH_SECS if self._url else 10)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({k: _scalar(v) for k, v in scalars.items()})
        line = json.dumps(row) + "\n"
        if self._url:
            self._rows.append(line)
            if time.monotonic() - self._flushed_at >= URL_FLUSH_SECS:
                self._flush_url()
        else:
            self._file.write(line)
            self._file.flush()
        for k, v in row.items():
            if k not in ("step", "time"):
                self._tb.add_scalar(k, v, global_step=int(step))

    def _flush_url(self) -> None:
        paths.write_text(self._path, "".join(self._rows))
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self._tb is not None:
            if self._url:
                self._flush_url()
            else:
                self._file.close()
            self._tb.close()
            self._file = self._tb = None


def complete_lines(text: str) -> list[str]:
    """The lines of ``text`` that end in a newline (a killed writer's half line is dropped)."""
    lines = text.splitlines(keepends=True)
    return lines if not lines or lines[-1].endswith("\n") else lines[:-1]


def drop_partial_line(path: paths.PathLike) -> None:
    """Truncates a local ``metrics.jsonl`` to its last complete line: a run killed mid-write
    leaves half a row, which the resumed run's first row would otherwise be glued to."""
    if not paths.exists(path):
        return
    keep = None  # the end of the last complete line, when the file does not end in one
    with paths.open_file(path, "rb") as f:
        pos = f.seek(0, 2)
        if pos == 0:
            return
        f.seek(pos - 1)
        if f.read(1) == b"\n":
            return
        while keep is None:
            start = max(0, pos - 65536)
            f.seek(start)
            nl = f.read(pos - start).rfind(b"\n")
            if nl >= 0 or start == 0:
                keep = start + nl + 1
            pos = start
    with paths.open_file(path, "ab") as f:  # append mode can still truncate
        f.truncate(keep)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"
