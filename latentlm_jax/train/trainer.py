"""The generic training loop (big_vision-style: flat and readable).

mesh → abstract model → shardings → sharded init or Orbax restore → jitted step with donated state →
metrics / checkpoints / eval. The model, its loss and its data come from the config's Task.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

from latentlm_jax import paths
from latentlm_jax.config.validate import validate
from latentlm_jax.data.bad_input import SkipTotals, pop_skip_counts, skip_summary
from latentlm_jax.parallel import distributed
from latentlm_jax.parallel.logical import activation_rules
from latentlm_jax.parallel.mesh import num_slices
from latentlm_jax.parallel.mesh_check import check_mesh
from latentlm_jax.train.checkpoint_cleanup import remove_partial_checkpoints
from latentlm_jax.train.data_checkpoint import DataRestore, DataSave
from latentlm_jax.train.flops import calibrate_peak_tflops
from latentlm_jax.train.metrics import MetricsWriter, format_duration, format_rate
from latentlm_jax.train.nonfinite import NonFiniteGuard
from latentlm_jax.train.preemption import SignalFlag, agreement
from latentlm_jax.train.profiling import StepProfiler
from latentlm_jax.train.setup import build_setup
from latentlm_jax.train.workdir_check import checkpoint_write_error, probe_workdir, step_dirs

log = logging.getLogger("latentlm")


def say(msg: str) -> None:
    """Console output from the primary process only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


class _Frozen:
    """A snapshot of an iterator's state, so an async save records the position at save time."""

    def __init__(self, state: Any):
        self._state = state

    def get_state(self) -> Any:
        return self._state


def to_global_batch(local: dict[str, np.ndarray], shardings: dict[str, NamedSharding],
                    skipped: SkipTotals | None = None) -> dict[str, jax.Array]:
    """Assembles per-process rows into global arrays sharded as the task asks; bad-input counts
    that travel with the batch go to ``skipped``."""
    counts = pop_skip_counts(local)
    if skipped is not None:
        skipped.add(counts)
    out = {}
    for k, sharding in shardings.items():
        if k in local:
            out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
    return out


def checkpoint_manager(workdir: str, config: mlc.ConfigDict) -> ocp.CheckpointManager:
    """The run's Orbax manager, after removing the unfinished checkpoints a hard kill left
    (train/checkpoint_cleanup.py): a restore only ever sees finalised steps."""
    directory = paths.join(workdir, "checkpoints")
    removed = remove_partial_checkpoints(directory)
    if removed:
        say(f"removed {len(removed)} unfinished checkpoint{'s' if len(removed) > 1 else ''} "
            f"(a killed save): {', '.join(removed)}")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.checkpoint.every_steps,
        max_to_keep=config.checkpoint.keep,
        enable_async_checkpointing=config.checkpoint.async_save,
        create=True,
    )
    # A URL (gs://...) stays a URL: Orbax writes through etils.epath / TensorStore.
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def train(config: mlc.ConfigDict, workdir: str, stop_at: int | None = None,
          devices: list | None = None) -> dict[str, float]:
    """Trains ``config`` into ``workdir`` (resuming if it holds a checkpoint); returns the last
    logged metrics. ``stop_at`` ends this run early at that step with a checkpoint, as if the job
    had been preempted there (the schedule still follows ``train.num_steps``). ``devices``
    restricts the mesh to a subset of the devices (tests)."""
    distributed.initialize(config)
    devices = list(jax.devices() if devices is None else devices)
    validate(config)
    check_mesh(config, len(devices), num_slices(devices))
    probe_workdir(workdir)  # mkdir -p, write + fsync + delete: a full disk is one line, now
    setup = build_setup(config, devices)
    task, mesh, rules = setup.task, setup.mesh, config.sharding_rules
    graphdef, b_shardings = setup.graphdef, setup.batch_shardings
    say(f"task={config.task} params={setup.num_params / 1e6:.2f}M mesh={dict(mesh.shape)} "
        f"devices={len(devices)} processes={jax.process_count()}")

    iterator = task.train_iterator(config, jax.process_index(), jax.process_count())
    manager = checkpoint_manager(workdir, config)
    latest = manager.latest_step()
    if latest is not None:
        train_state = restore_state(manager, latest, setup.abstract_state(), iterator)
        say(f"Resuming from checkpoint at step {latest} in {workdir}/checkpoints")
    else:
        train_state = setup.init_state()
    step_fn = setup.step_fn

    peak = config.metrics.peak_tflops_per_device or calibrate_peak_tflops(config.model.dtype)
    flops_per_step = task.flops_per_step(config)
    unit, items_per_step = task.items_per_step(config)
    writer = MetricsWriter(workdir)
    skipped = SkipTotals()  # data/skipped/<reason>: bad examples dropped (this process)
    start = int(jax.device_get(train_state["step"]))
    total = config.train.num_steps
    last: dict[str, float] = {}
    window_t0, window_steps, data_wait = time.perf_counter(), 0, 0.0
    run_t0, run_steps = window_t0, 0
    guard = NonFiniteGuard(config.train)  # a NaN step stops the run here, never in a checkpoint
    profiler = StepProfiler(config, workdir, start, say)  # train.profile_start_step

    saving: list[int | None] = [None]  # the newest save's step: an async write fails later

    def wait_for_saves() -> None:
        with _checkpoint_writes(workdir, saving[0]):
            manager.wait_until_finished()

    def save(step: int) -> None:
        guard.check(train_state, manager.latest_step)
        wait_for_saves()  # (Orbax waits anyway) a failed async write is named by its own step
        saving[0] = step
        # The loop decides when to save; force=True bypasses Orbax's own interval policy.
        with _checkpoint_writes(workdir, step):
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(train_state),
                data=DataSave(_Frozen(iterator.get_state()))), force=True)
        agreed.saved(step)

    try:
        with activation_rules(mesh, rules), SignalFlag() as sigterm:
            step = start
            pending = None
            if step < total:  # compile ahead of time so step timings exclude compilation
                pending = to_global_batch(next(iterator), b_shardings, skipped)
                t0 = time.perf_counter()
                step_fn = step_fn.lower(train_state, pending).compile()
                if profiler.pending:
                    profiler.hlo_text = step_fn.as_text()
                say(f"compiled the train step in {time.perf_counter() - t0:.1f}s")
            # Every process decides alike when to save out of schedule (SIGTERM, every_minutes).
            agreed = agreement(config, sigterm)
            window_t0 = run_t0 = time.perf_counter()
            while step < total:
                if pending is None:
                    t0 = time.perf_counter()
                    batch = to_global_batch(next(iterator), b_shardings, skipped)
                    data_wait += time.perf_counter() - t0
                else:
                    batch, pending = pending, None
                profiler.before_step(step, train_state)
                train_state, metrics = step_fn(train_state, batch)
                step += 1
                profiler.after_step(step, train_state)
                guard.record(step, metrics)
                window_steps += 1
                run_steps += 1
                if step % config.train.log_every == 0 or step == total:
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    dt = (now - window_t0) / window_steps
                    tflops = flops_per_step / dt / len(devices) / 1e12
                    last = {k: float(np.asarray(v)) for k, v in metrics.items()}
                    last.update({
                        f"{unit}_per_sec": items_per_step / dt,
                        "step_time_s": dt,
                        "tflops_per_device": tflops,
                        "mfu": tflops / peak if peak > 0 else 0.0,
                        "data_wait_frac": data_wait / (now - window_t0),
                    })
                    last.update(skipped.as_metrics())
                    writer.write(step, last)
                    eta = (now - run_t0) / run_steps * (total - step)
                    say(f"step {step:>6}/{total} | loss {last['loss']:.4f} | "
                        f"{format_rate(items_per_step / dt)} {unit}/s | mfu {last['mfu']:.1%} | "
                        f"data {last['data_wait_frac']:.0%} | ETA {format_duration(eta)}")
                    window_t0, window_steps, data_wait = time.perf_counter(), 0, 0.0
                    guard.check(train_state, manager.latest_step)
                if config.train.eval_every and step % config.train.eval_every == 0:
                    guard.check(train_state, manager.latest_step)
                    evaluate(task, graphdef, train_state, config, workdir, step, writer)
                decision = agreed.decide(step)
                if decision.stop or (stop_at is not None and step >= stop_at < total):
                    save(step)
                    wait_for_saves()
                    agreed.close()
                    reason = agreed.reason() if decision.stop else "stop_at"
                    say(f"{reason}: saved checkpoint at step {step}; exiting")
                    _say_skipped(skipped)
                    return last
                if decision.save or step % config.checkpoint.every_steps == 0 or step == total:
                    save(step)
            agreed.close()
        wait_for_saves()
        say(f"done: {total} steps; checkpoints in {workdir}/checkpoints")
        _say_skipped(skipped)
        if last.get("nonfinite_skipped"):
            say(f"{int(last['nonfinite_skipped'])} non-finite steps skipped, parameters untouched "
                f"(train.nonfinite=skip; nonfinite_skipped in metrics.jsonl)")
        return last
    finally:
        profiler.stop()  # a run that ends inside the window keeps what it traced
        iterator.close()
        manager.close()
        writer.close()


@contextlib.contextmanager
def _checkpoint_writes(workdir: str, step: int | None) -> Iterator[None]:
    """Turns a storage failure of the checkpoint write of ``step`` (disk full, no permission;
    raised by the save itself or, when asynchronous, by the wait for it) into one line that names
    the step and the newest checkpoint left intact."""
    try:
        yield
    except Exception as e:
        done = step_dirs(workdir) - {step}  # finalized ones only
        error = checkpoint_write_error(e, workdir, step, max(done, default=None))
        if error is None:
            raise
        raise error from e


def restore_state(manager: ocp.CheckpointManager, step: int, abstract: dict,
                  iterator: Any) -> dict:
    """The train state saved at ``step`` (and the iterator's position). A checkpoint written
    before the non-finite guard existed has no ``nonfinite`` counters: they restart at 0."""

    def restore(target: dict) -> dict:
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=DataRestore(iterator)))["state"]

    try:
        return restore(abstract)
    except ValueError as e:
        if "nonfinite" not in str(e):
            raise
    state = restore({k: v for k, v in abstract.items() if k != "nonfinite"})
    state["nonfinite"] = jax.tree.map(
        lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding), abstract["nonfinite"])
    return state


def _say_skipped(skipped: SkipTotals) -> None:
    """The bad examples this run skipped, per reason (this process's count; nothing if none)."""
    line = skip_summary(skipped.as_metrics())
    if line:
        say(f"{line} (data.bad_input='skip'; data/skipped/<reason> in metrics.jsonl)")


def evaluate(task, graphdef, train_state: dict, config: mlc.ConfigDict, workdir: str, step: int,
             writer: MetricsWriter) -> dict[str, float]:
    from flax import nnx

    model = nnx.merge(graphdef, train_state["params"])
    results = task.evaluate(model, config, workdir, step)
    if results:
        writer.write(step, {f"eval/{k}": v for k, v in results.items()})
        say("eval step {}: {}".format(step, " ".join(f"{k}={v:.4g}" for k, v in results.items())))
    return results
