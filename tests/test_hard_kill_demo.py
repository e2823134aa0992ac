"""``latentlm demo --fast`` (shrunk further) is killed in one stage (CI: drawn by the date, or
``LATENTLM_KILL_STAGE=k``; full run, ``LATENTLM_FULL_FAULTS=1``: in each of the six stages in turn)
and re-run: it finishes with the scores and samples of an uninterrupted demo."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np
import pytest

from tests.helpers import latentlm_command, one_device_env
from tests.test_hard_kill import COMPILED, FULL, _read, _run, _wait_for

# ------------------------------------------------------------------------------ the demo
# `latentlm demo --fast` shrunk further: a few steps per training stage (several checkpoints
# each), few encoded examples and samples. Stage k prints "[k/6] <title>" when it starts and
# "[k/6] done|reused in ..." when it ends.
DEMO_SMALL = ["--fast", *(f"--config.{k}={v}" for k, v in {
    "vae_image.train.num_steps": 12, "vae_image.train.warmup_steps": 2,
    "vae_image.checkpoint.every_steps": 4, "vae_audio.train.num_steps": 8,
    "vae_audio.train.warmup_steps": 2, "vae_audio.checkpoint.every_steps": 4,
    "lm.train.num_steps": 12, "lm.train.warmup_steps": 2, "lm.checkpoint.every_steps": 4,
    "encode.num_examples": 64, "generate.text_to_image": 4, "generate.image_to_text": 2,
    "generate.text_to_audio": 2, "generate.audio_to_text": 2, "generate.batch_size": 4,
    "generate.steps": 2}.items())]
DEMO_STAGES = 6
TRAINING_STAGES = (1, 2, 4)  # the σ-VAEs and the LatentLM
ENCODE_STAGE = 3


def _demo_stages_to_kill() -> list[int]:
    """Every stage in the full run; in CI one, drawn by the date (a different stage from day
    to day, the same all day) unless LATENTLM_KILL_STAGE names it."""
    if FULL:
        return list(range(1, DEMO_STAGES + 1))
    if os.environ.get("LATENTLM_KILL_STAGE"):
        return [int(os.environ["LATENTLM_KILL_STAGE"])]
    return [1 + time.gmtime().tm_yday % DEMO_STAGES]


@pytest.mark.slow
def test_demo_survives_a_kill_in_each_stage(tmp_path):
    env = dict(one_device_env(), PYTHONUNBUFFERED="1")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    demo = latentlm_command("demo", *DEMO_SMALL, "--workdir")
    rng = np.random.default_rng(3)
    ref = _run(demo + [str(tmp_path / "ref")], tmp_path / "ref.log", env, session=False)
    assert ref.wait(timeout=900) == 0, _read(tmp_path / "ref.log")[-3000:]
    killed_in = []
    for k in _demo_stages_to_kill():
        log = tmp_path / f"kill{k}.log"
        proc = _run(demo + [str(tmp_path / "killed")], log, env)
        header = f"[{k}/{DEMO_STAGES}] "
        assert _wait_for(log, header, proc, timeout=900), _read(log)[-3000:]
        if k in TRAINING_STAGES:  # into the training steps and their checkpoint writes
            assert _wait_for(log, COMPILED, proc, timeout=900, after=header), _read(log)[-3000:]
            time.sleep(rng.uniform(0.0, 1.0))
        elif k == ENCODE_STAGE:  # between the image shard and the audio one (a quick stage)
            assert _wait_for(log, "wrote ", proc, timeout=900, after=header), _read(log)[-3000:]
        else:
            time.sleep(rng.uniform(0.2, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        text = _read(log)
        started = re.findall(r"^\[(\d)/6\] (?!done|reused)", text, re.M)
        ended = re.findall(r"^\[(\d)/6\] (?:done|reused) in", text, re.M)
        running = [int(s) for s in started if s not in ended]
        assert running, f"the kill in stage {k} came after the demo ended:\n{text[-2000:]}"
        killed_in.append(running[-1])
    log = tmp_path / "final.log"
    proc = _run(demo + [str(tmp_path / "killed")], log, env)
    assert proc.wait(timeout=900) == 0, _read(log)[-3000:]
    expected = json.loads(_read(tmp_path / "ref" / "results.json"))
    results = json.loads(_read(tmp_path / "killed" / "results.json"))
    assert results["scores"] == expected["scores"]
    assert results["samples"] == expected["samples"]
    print(f"demo killed in stages {killed_in}")
    assert set(killed_in) == set(_demo_stages_to_kill())
