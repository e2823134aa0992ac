"""Plain helpers shared by the tests: paths, tiny configs, subprocess commands, run metrics.

Plain functions rather than fixtures: they take arguments (mesh shapes, overrides), are used at
module level (paths, CLI argument lists) and compose. ``tests/conftest.py`` sets the JAX
environment before any test module, and so this one, imports jax.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import load_config_file
from latentlm_jax.config.vae import vae_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name: str) -> str:
    """The path of a config file shipped in ``configs/``, e.g. ``config_path("lm_tiny.py")``."""
    return os.path.join(ROOT, "configs", name)


LM_TINY = config_path("lm_tiny.py")


# ------------------------------------------------------------------------------ subprocesses
def latentlm_command(*args: str) -> list[str]:
    """``latentlm ARGS`` run by this interpreter: ``python -m latentlm_jax.cli.main ARGS``."""
    return [sys.executable, "-m", "latentlm_jax.cli.main", *args]


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with ``devices`` host CPU devices, compiled like the tests'
    own process (``TEST_XLA_FLAGS`` in tests/conftest.py)."""
    from tests.conftest import TEST_XLA_FLAGS

    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def one_device_env() -> dict[str, str]:
    """The environment for a CLI subprocess on one host CPU device."""
    return dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")


def full_run(variable: str) -> bool:
    """Whether the environment asks for the full version of a sampled heavy test
    (``LATENTLM_FULL_FAULTS`` / ``LATENTLM_FULL_PROOFS`` set to anything but "" or "0")."""
    return os.environ.get(variable, "") not in ("", "0")


FULL_FAULTS = full_run("LATENTLM_FULL_FAULTS")  # every kill loop, stage and fuzz example
FULL_PROOFS = full_run("LATENTLM_FULL_PROOFS")  # the memory proofs at their real sizes
COMPILED = "compiled the train step"  # what a trainer logs once its step is compiled


def read_text(path) -> str:
    with open(path) as f:
        return f.read()


def start_logged(cmd: list[str], log, env: dict[str, str], session: bool = True
                 ) -> subprocess.Popen:
    """Starts ``cmd`` with stdout and stderr into the file ``log`` (its own session by default,
    so that a kill reaches its children too)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=session)


def wait_for_text(log, text: str, proc: subprocess.Popen, timeout: float = 120,
                  after: str = "") -> bool:
    """Waits until ``text`` is in ``log`` (after the first ``after`` when given); False when
    the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        content = read_text(log)
        if after in content and text in content[content.index(after):]:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {log} after {timeout}s")


def drawn_today(choices: tuple[str, ...], override: str) -> str:
    """The sample a heavy test runs in CI today: ``choices[day of the year % len]`` (another one
    the next day, the same all day), or the environment variable ``override`` when set."""
    choice = os.environ.get(override) or choices[time.gmtime().tm_yday % len(choices)]
    if choice not in choices:
        raise ValueError(f"{override}={choice!r}: expected one of {', '.join(choices)}")
    return choice


def multiprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a process of a multi-process run: CPU, compiled like the tests' own
    process, no forced device count (the launcher or the worker decides), then ``extra``."""
    from tests.conftest import TEST_XLA_FLAGS

    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": TEST_XLA_FLAGS, **extra}


# ------------------------------------------------------------------------------ tiny configs
# The transformer shape of the fast tests: LM, LatentLM backbone and the training runs.
TINY_MODEL = {"num_layers": 2, "emb_dim": 32, "mlp_dim": 64, "num_heads": 4, "num_kv_heads": 2,
              "head_dim": 8}


def set_dotted(node, changes: dict) -> None:
    """``set_dotted(c.vae, {"image.latent_dim": 4})`` sets ``c.vae.image.latent_dim = 4``."""
    for key, value in changes.items():
        *path, last = key.split(".")
        target = node
        for p in path:
            target = target[p]
        target[last] = value


def tiny_model(model=None, **changes):
    """A model config (``base_config().model`` unless given) in the ``TINY_MODEL`` shape, then
    ``changes``; returned (and changed in place when given)."""
    m = base_config().model if model is None else model
    for k, v in {**TINY_MODEL, **changes}.items():
        m[k] = v
    return m


def _test_run(c, mesh: dict[str, int]):
    """Settings every short training run in the tests shares: no MFU calibration, one device per
    mesh axis unless ``mesh`` says otherwise."""
    c.metrics.peak_tflops_per_device = 1.0  # skip calibration in tests
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = 1, 1, 1
    for k, v in mesh.items():
        c.mesh.ici[k] = v
    return c


def tiny_lm_config(**mesh):
    """``configs/lm_tiny.py`` shrunk to ``TINY_MODEL``: 20 steps of 8 × 32 tokens, logging every
    step, checkpoints every 10; ``mesh`` sets ``mesh.ici`` axes (others 1)."""
    c = load_config_file(LM_TINY)
    tiny_model(c.model)
    c.data.seq_len, c.train.global_batch_size = 32, 8
    c.train.num_steps, c.train.warmup_steps, c.train.log_every = 20, 2, 1
    c.checkpoint.every_steps = 10
    return _test_run(c, mesh)


def text_config(path, **data):
    """``base_config()`` reading the text file ``path`` (one document a line): rows of 64 tokens,
    batches of 4; ``data`` sets other ``c.data`` fields."""
    c = base_config()
    c.data.source = "text_files"
    c.data.text_files = (str(path),)
    c.data.seq_len = 64
    c.train.global_batch_size = 4
    for k, v in data.items():
        c.data[k] = v
    return c


def tiny_vae(vae=None, *, kind: str | None = None, image_channels: int = 4,
             audio_channels: int = 2, channel_mult: tuple[int, ...] | None = None, **changes):
    """A σ-VAE config node (``vae_defaults()`` unless given) with few channels, then dotted
    ``changes`` (``**{"image.latent_dim": 4}``); returned (and changed in place when given)."""
    v = vae_defaults() if vae is None else vae
    if kind is not None:
        v.kind = kind
    v.image.channels = image_channels
    v.audio.channels = audio_channels
    if channel_mult is not None:
        v.image.channel_mult = v.audio.channel_mult = channel_mult
    set_dotted(v, changes)
    return v


def tiny_vae_config(task: str = "vae_image", **vae):
    """``base_config()`` for a σ-VAE ``task`` (``vae_image`` / ``vae_audio``) with a tiny VAE,
    8 eval examples and batches of 4; ``vae`` are dotted changes to ``c.vae``."""
    c = base_config()
    c.task = task
    tiny_vae(c.vae, image_channels=8, audio_channels=4, channel_mult=(1, 2))
    c.vae.eval_examples = 8
    c.train.global_batch_size = 4
    set_dotted(c.vae, vae)
    return c


def tiny_vae_run_config(task: str = "vae_image", **mesh):
    """``configs/{task}_tiny.py`` with a tiny VAE: 6 steps of 8 examples, logging every step, no
    eval, a checkpoint at step 6; ``mesh`` sets ``mesh.ici`` axes (others 1)."""
    c = load_config_file(config_path(f"{task}_tiny.py"))
    tiny_vae(c.vae, image_channels=8, audio_channels=8, channel_mult=(1, 2))
    c.vae.eval_examples = 8
    c.train.global_batch_size, c.train.num_steps, c.train.warmup_steps = 8, 6, 1
    c.train.log_every, c.train.eval_every, c.checkpoint.every_steps = 1, 0, 6
    return _test_run(c, mesh)


# ------------------------------------------------------------------------------ run outputs
def read_metrics(workdir) -> list[dict]:
    """The rows of ``WORKDIR/metrics.jsonl``, in order (training and eval rows alike)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(workdir) -> dict[int, float]:
    """``{step: loss}`` from the training rows of ``WORKDIR/metrics.jsonl`` (eval rows have no
    ``loss``); a step logged twice keeps its last value."""
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
