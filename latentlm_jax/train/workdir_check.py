"""Pre-flight checks of a training workdir, before anything is compiled (docs/reliability.md).

:func:`check_resume` runs before anything is written: a workdir whose checkpoints were trained with
another model (another ``model.emb_dim``, task or σ-VAE shape) is a config error naming the field,
not an Orbax shape mismatch after compilation. :func:`probe_workdir` then makes the workdir like
``mkdir -p`` and writes, fsyncs and deletes a small file in it, so an unwritable, read-only or full
disk is one line before the step compiles, not a failed checkpoint after the first hour.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.sweep import flatten

PROBE_NAME = ".latentlm-write-probe"
PROBE_BYTES = 64 * 1024  # enough to touch a data block, small enough to be instant

# Model fields that change how a run computes, not the shapes it saves: a resume may change them.
_RUNTIME_MODEL_FIELDS = {"dtype", "remat_policy", "attention", "init_std", "init", "diffusion"}
# σ-VAE fields that are weights-free (loss weights, noise, eval sizes).
_SHAPED_VAE_GROUPS = ("kind", "image", "audio")
_SHAPED_VAE_LOSS = ("adversarial", "disc_channels", "disc_layers")


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    """:func:`~latentlm_jax.config.sweep.flatten` with sequences as tuples, so a config's tuple
    and the list config.json saved for it compare equal."""
    return {k: tuple(v) if isinstance(v, list | tuple) else v
            for k, v in flatten(node, prefix).items()}


def state_fields(config: mlc.ConfigDict | dict) -> dict[str, Any]:
    """The fields that fix the shapes and structure of a run's saved train state."""
    task = config.get("task", "lm")
    out: dict[str, Any] = {"task": task}
    if task == "lm":
        model = config.get("model", {})
        for key in model:
            if key not in _RUNTIME_MODEL_FIELDS:
                out.update(_flat(model[key], f"model.{key}"))
    else:
        vae = config.get("vae", {})
        for key in _SHAPED_VAE_GROUPS:
            if key in vae:
                out.update(_flat(vae[key], f"vae.{key}"))
        for key in _SHAPED_VAE_LOSS:
            if key in vae.get("loss", {}):
                out[f"vae.loss.{key}"] = vae["loss"][key]
    if "ema_decay" in config.get("train", {}):
        out["train.ema_decay>0"] = config["train"]["ema_decay"] > 0
    return out


def step_dirs(workdir: str) -> set[int]:
    """The steps of ``workdir/checkpoints``' step directories (Orbax's unfinished ones are named
    ``<step>.orbax-checkpoint-tmp…`` and are not among them)."""
    names = paths.listdir(paths.join(workdir, "checkpoints"))
    return {int(name) for name in names if name.isdigit()}


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir/checkpoints`` holds a step directory."""
    return bool(step_dirs(workdir))


def check_resume(config: mlc.ConfigDict, workdir: str) -> None:
    """A workdir with checkpoints resumes only a run of the same model: a field that changes the
    saved state's shapes is a :class:`ConfigError` naming it (nothing is written)."""
    if not paths.is_dir(workdir) or not has_checkpoint(workdir):
        return
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        return  # checkpoints without config.json: Orbax's own restore checks the shapes
    try:  # fields a run made before they existed are missing there: not compared
        saved = json.loads(paths.read_text(path))
        old = state_fields(saved)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError("", f"--workdir {workdir}: its config.json is unreadable ({e}); use a "
                              "new --workdir") from e
    new = state_fields(config)
    for field, value in new.items():
        if field in old and old[field] != value:
            name = field.removesuffix(">0")
            raise ConfigError(name, f"the checkpoints in {workdir} were trained with "
                                    f"{name}={old[field]!r}, not {value!r}: resume with "
                                    f"--config.{name}={old[field]!r}, or train into a new "
                                    f"--workdir")


def probe_workdir(workdir: str) -> None:
    """Makes ``workdir`` (and missing parents, like ``mkdir -p``), then writes, fsyncs and deletes
    a small file in it. An unwritable place, a read-only or full disk is one line."""
    where = paths.as_str(workdir)
    if paths.exists(workdir) and not paths.is_dir(workdir):
        raise ConfigError("", f"--workdir {where} is a file, not a directory")
    probe = paths.join(workdir, f"{PROBE_NAME}-{os.getpid()}")
    try:
        paths.makedirs(workdir)
        with paths.open_file(probe, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            if not paths.is_url(probe) and hasattr(f, "fileno"):
                os.fsync(f.fileno())
        paths.remove(probe)
    except OSError as e:
        raise ConfigError("", f"--workdir {where} is not writable: {describe_os_error(e)}") from e


def describe_os_error(e: OSError) -> str:
    """One line for a storage error, with what to do about the common ones."""
    reason = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "the disk is full: free space or use another --workdir",
            errno.EDQUOT: "the disk quota is exceeded: free space or use another --workdir",
            errno.EROFS: "the file system is read-only: use another --workdir",
            errno.EACCES: "no permission: use a --workdir you can write to",
            errno.EPERM: "no permission: use a --workdir you can write to"}.get(e.errno)
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return f"{reason}{where}" + (f"; {hint}" if hint else "")


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (disk full, permissions, a bucket refusing the write):
    training stops with this one line; the checkpoints written before it are intact."""


_STORAGE_WORDS = ("no space left", "disk quota", "read-only file system", "permission denied",
                  "input/output error")


def storage_cause(exc: BaseException) -> str | None:
    """The storage failure behind ``exc`` (an ``OSError`` anywhere in its cause chain, or an
    error whose text names one, as TensorStore reports them), described; None for anything else
    (a bug keeps its traceback)."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and not isinstance(node, TimeoutError | ConnectionError):
            return describe_os_error(node)
        text = str(node).lower()
        if any(word in text for word in _STORAGE_WORDS):
            return " ".join(str(node).split())[:300]
        node = node.__cause__ or node.__context__
    return None


def checkpoint_write_error(exc: BaseException, workdir: str, step: int | None,
                           previous: int | None) -> CheckpointWriteError | None:
    """The one-line error for a failed checkpoint write of ``step`` (None when ``exc`` is no
    storage failure); ``previous`` is the newest complete checkpoint, which stays restorable."""
    cause = storage_cause(exc)
    if cause is None:
        return None
    what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
    keep = (f"the checkpoint of step {previous} is intact: fix the storage and re-run the same "
            f"command to resume from it" if previous is not None else
            "no earlier checkpoint exists: fix the storage and re-run")
    return CheckpointWriteError(f"{what} could not be written to "
                                f"{paths.as_str(paths.join(workdir, 'checkpoints'))}: {cause}; "
                                f"training stopped; {keep}")
