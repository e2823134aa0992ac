"""Tracing a window of train steps with ``jax.profiler`` (``train.profile_start_step``,
``train.profile_steps``), as MaxText's profiler options do.

The trace goes to ``<workdir>/profile`` (TensorBoard's profile plugin reads it:
``tensorboard --logdir <workdir>``). Every process traces its own host; the files are named by
host. A cloud workdir gets the trace written to a local temporary folder first and copied up when
the window ends, because the profiler writes local files. ``latentlm bench train --profile DIR``
traces the same step program and prints where its time went per op (latentlm_jax/bench/profile.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc

from latentlm_jax import paths


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

    def before_step(self, step: int) -> None:
        """Called with the number of steps completed, before the next one runs."""
        if self.pending and step == self.start:
            if paths.is_url(self.dest):
                self.staging = tempfile.TemporaryDirectory(prefix="latentlm-profile-")
                self.local = self.staging.name
            else:
                self.local = self.dest
                paths.makedirs(self.local)
            jax.profiler.start_trace(self.local)
            self.active, self.pending = True, False

    def after_step(self, step: int, state: Any) -> None:
        """Called with the number of steps completed; ends the window after its last step."""
        if self.active and step >= self.start + self.steps:
            self.stop(state)

    def stop(self, state: Any = None) -> None:
        """Ends an active trace (the window's end, or the run's if it stops inside it)."""
        if not self.active:
            return
        if state is not None:
            jax.block_until_ready(state)  # the window's last step is in the trace
        jax.profiler.stop_trace()
        self.active = False
        if self.staging is not None:  # a cloud workdir: copy the local trace up
            for src in paths.find_files(self.local):
                rel = os.path.relpath(src, self.local)
                paths.copy_file(src, paths.join(self.dest, *rel.split(os.sep)))
            self.staging.cleanup()
            self.staging = None
        self.say(f"profiled steps {self.start + 1}–{self.start + self.steps} into {self.dest} "
                 f"(tensorboard --logdir {self.dest})")
