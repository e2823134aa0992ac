"""``latentlm generate``: every bad request gets one clear line and exit status 2."""

import os
import subprocess
import sys

import pytest


def run_cli(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "latentlm_jax.cli.main", "generate", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args,fragment", [
    (["--modality", "video", "--prompt", "x", "--out", "o"], "--modality must be one of"),
    (["--modality", "image", "--prompt", "   ", "--out", "o"], "non-empty --prompt"),
    (["--modality", "image", "--out", "o"], "non-empty --prompt"),
    (["--modality", "audio", "--prompt", "notes C4"], "--out DIR is required"),
    (["--modality", "text"], "exactly one of --image"),
    (["--modality", "text", "--image", "/nonexistent.png"], "input file not found"),
    (["--modality", "image", "--prompt", "x", "--out", "o", "--num-samples", "0"],
     "--num-samples"),
])
def test_bad_requests(tmp_path, args, fragment):
    proc = run_cli("--workdir", str(tmp_path), *args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_not_a_workdir(tmp_path):
    proc = run_cli("--workdir", str(tmp_path), "--modality", "image", "--prompt", "a red circle",
                   "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "config.json" in proc.stderr, proc.stderr
