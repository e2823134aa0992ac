"""``latentlm generate``: every bad request gets one clear line and exit status 2."""

import subprocess

import pytest

from tests.helpers import latentlm_command, one_device_env

pytestmark = pytest.mark.slow  # each test runs the CLI in a subprocess


def run_cli(*args):
    return subprocess.run(latentlm_command("generate", *args), capture_output=True, text=True,
                          env=one_device_env(), timeout=120)


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
