"""Tracing a window of train steps with ``jax.profiler`` (``train.profile_start_step``,
``train.profile_steps``), as MaxText's profiler options do.

The trace goes to ``<workdir>/profile`` (TensorBoard's profile plugin reads it:
``tensorboard --logdir <workdir>``). Every process traces its own host; the files are named by
host. A cloud workdir gets the trace written to a local temporary folder first and copied up when
the window ends, because the profiler writes local files. The compiled step's HLO and the number
of traced steps go beside it, so ``latentlm profile <workdir>/profile`` prints where the steps'
time went per op and per matmul shape (latentlm_jax/bench/profile.py), as ``latentlm bench train
--profile DIR`` does.

Inside the window each step is waited for before the next is dispatched, so that every traced
step has its own annotation, wall time and page-fault count: the report leaves out a step that
grew the host heap, whose ops look slower than they are. Steps outside the window stay
asynchronous.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.bench.profile import CallTimer, write_profile_files


class StepProfiler:
    """Starts a trace before step ``profile_start_step`` runs (counting completed steps, so 0 is
    the first step) and stops it once ``profile_steps`` steps have completed."""

    def __init__(self, config: mlc.ConfigDict, workdir: str, first_step: int,
                 say: Callable[[str], None]):
        t = config.train
        self.start, self.steps = int(t.profile_start_step), int(t.profile_steps)
        self.say = say
        self.dest = paths.as_str(paths.join(workdir, "profile"))
        self.active = False
        self.pending = self.start >= 0
        if self.pending and first_step > self.start:
            say(f"train.profile_start_step={self.start} is before this run's first step "
                f"{first_step} (resumed): not profiling")
            self.pending = False
        self.local = ""
        self.staging: tempfile.TemporaryDirectory | None = None
        self.hlo_text = ""  # the compiled step's, written beside the trace (set by the trainer)
        self.traced = 0
        self.timer: CallTimer | None = None  # the traced step in flight
        self.timings: list[dict[str, float]] = []

    def before_step(self, step: int, state: Any = None) -> None:
        """Called with the number of steps completed and the state they left, before the next
        step runs."""
        if self.pending and step == self.start:
            # steps run asynchronously: the previous one must end before the trace starts
            jax.block_until_ready(state)
            if paths.is_url(self.dest):
                self.staging = tempfile.TemporaryDirectory(prefix="latentlm-profile-")
                self.local = self.staging.name
            else:
                self.local = self.dest
                paths.makedirs(self.local)
            jax.profiler.start_trace(self.local, create_perfetto_trace=True)
            self.active, self.pending = True, False
        if self.active:
            self.timer = CallTimer(self.traced).__enter__()

    def after_step(self, step: int, state: Any) -> None:
        """Called with the number of steps completed; ends the window after its last step."""
        if self.active:
            self._end_call(state)
            if step >= self.start + self.steps:
                self.stop(state)

    def _end_call(self, state: Any) -> None:
        if self.timer is not None:
            jax.block_until_ready(state)  # the step's own time, in its own annotation
            self.timer.__exit__(None, None, None)
            self.timings.append(self.timer.timing)
            self.timer = None
            self.traced += 1

    def stop(self, state: Any = None) -> None:
        """Ends an active trace (the window's end, or the run's if it stops inside it)."""
        if not self.active:
            return
        if state is not None:
            jax.block_until_ready(state)  # the window's last step is in the trace
        if self.timer is not None:  # the run stopped between before_step and after_step
            self.timer.__exit__(None, None, None)
            self.timer = None
        jax.profiler.stop_trace()
        self.active = False
        if self.hlo_text and self.traced:
            write_profile_files(self.local, self.hlo_text, self.traced, self.timings)
        if self.staging is not None:  # a cloud workdir: copy the local trace up
            for src in paths.find_files(self.local):
                rel = os.path.relpath(src, self.local)
                paths.copy_file(src, paths.join(self.dest, *rel.split(os.sep)))
            self.staging.cleanup()
            self.staging = None
        self.say(f"profiled steps {self.start + 1}–{self.start + self.traced} into {self.dest} "
                 f"(latentlm profile {self.dest}; tensorboard --logdir {self.dest})")
