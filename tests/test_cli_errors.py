"""One bad-input policy everywhere, and one line for every known user error.

Under ``data.bad_input=error`` the first bad example stops a command with one line naming the
manifest line and the file, exit status 2, no traceback; under ``skip`` the counts per reason are
printed at the end. Config, data, missing-file and workdir errors are one line and exit status 2;
a genuine bug (or ``--debug``) keeps its traceback. Subprocesses only where the real stderr and
exit status are the point (Pillow's warning, logging, the interpreter's traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from latentlm_jax.cli import main as cli_main
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.bad_input import (
    BadInput,
    DataError,
    print_skip_summary,
    skip_summary,
)
from tests.helpers import ROOT, one_device_env

LATENTLM = os.path.join(os.path.dirname(sys.executable), "latentlm")
VAE_IMAGE = os.path.join(ROOT, "configs", "vae_image_tiny.py")
LM_TINY = os.path.join(ROOT, "configs", "lm_tiny.py")
SMALL = ["--config.vae.image.channels=8", "--config.vae.image.channel_mult=(1, 2)",
         "--config.metrics.peak_tflops_per_device=1.0"]


def latentlm(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([LATENTLM, *args], capture_output=True, text=True, timeout=timeout,
                          env=one_device_env(), cwd=ROOT)  # one device, as a user has


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentlm: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def manifest(tmp_path, lines: list[dict]) -> str:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


def images(tmp_path, n: int = 4) -> list[str]:
    for i in range(n):
        Image.new("RGB", (40, 40), (0, 128, 128)).save(tmp_path / f"ok{i}.png")
    return [f"ok{i}.png" for i in range(n)]


# ------------------------------------------------------------------------------ subprocesses
def test_a_vae_on_an_unsupported_source_is_one_line(tmp_path):
    proc = latentlm("train", "--config", VAE_IMAGE, "--workdir", str(tmp_path / "w"),
                    "--config.data.source=text_files")
    assert_one_line_error(proc, "config.data.source: a vae_image run reads images")
    assert not (tmp_path / "w").exists()


def test_a_missing_manifest_is_one_line_and_makes_no_workdir(tmp_path):
    proc = latentlm("train", "--config", VAE_IMAGE, "--workdir", str(tmp_path / "w"),
                    "--config.data.source=manifest",
                    f"--config.data.manifest={tmp_path}/nope.jsonl")
    assert_one_line_error(proc, f"config.data.manifest: no such file: {tmp_path}/nope.jsonl")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # builds the model before the first batch (~15 s)
def test_under_error_the_first_bad_line_stops_train(tmp_path):
    names = images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    path = manifest(tmp_path, [{"image": names[0]}, {"text": "not an image: not an error"},
                               {"image": "broken.png"}, {"image": names[1]}])
    proc = latentlm("train", "--config", VAE_IMAGE, "--workdir", str(tmp_path / "w"), *SMALL,
                    "--config.data.source=manifest", f"--config.data.manifest={path}",
                    "--config.data.bad_input=error")
    assert_one_line_error(proc, f"bad input (corrupt_image) at manifest {path} line 3, file "
                                f"{tmp_path}/broken.png", "data.bad_input='skip'")


@pytest.mark.slow  # trains two steps (~25 s)
def test_under_skip_train_prints_the_counts_and_no_pillow_warning(tmp_path):
    names = images(tmp_path)
    Image.new("1", (12000, 12000), 1).save(tmp_path / "huge.png", optimize=True)  # 33 KB
    lines = [{"image": n} for n in names] + [
        {"text": "no image"}, {"audio": "a.wav"}, {"image": "missing.png"},
        {"image": "huge.png"}, {"image": 3}]
    proc = latentlm("train", "--config", VAE_IMAGE, "--workdir", str(tmp_path / "w"), *SMALL,
                    f"--config.data.manifest={manifest(tmp_path, lines)}",
                    "--config.data.source=manifest", "--config.train.num_steps=2",
                    "--config.train.global_batch_size=8", "--config.train.eval_every=0",
                    "--config.checkpoint.every_steps=2", "--config.data.shuffle=false")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    # 16 rows from 4 good lines of 9: the 5 others are read in 3 epochs (the 4th stops at its
    # 4th image); per reason, in alphabetical order
    assert last.startswith("skipped 3 (bad_field), 3 (missing_file), 6 (no_image), "
                           "3 (too_large)"), last
    assert "DecompressionBomb" not in proc.stderr and "Traceback" not in proc.stderr
    assert "too_large" in proc.stderr  # the one warning per reason, naming the line
    with open(tmp_path / "w" / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f][-1]
    assert metrics["data/skipped/too_large"] == 3 and metrics["data/skipped/no_image"] == 6


# ------------------------------------------------------------------------------ in-process
def test_debug_keeps_the_traceback(tmp_path):
    args = ["train", "--config", VAE_IMAGE, "--workdir", str(tmp_path / "w"),
            "--config.data.source=latents"]
    assert cli_main.main(args) == 2
    with pytest.raises(ConfigError, match="a vae_image run reads images"):
        cli_main.main(["--debug", *args])
    with pytest.raises(ConfigError, match="a vae_image run reads images"):
        cli_main.main([*args, "--debug"])  # after the command too


def test_bugs_keep_their_traceback_user_errors_do_not(monkeypatch, capsys):
    from latentlm_jax.cli import tokenizer

    def boom(args):
        raise KeyError("a genuine bug")

    monkeypatch.setattr(tokenizer, "run", boom)
    with pytest.raises(KeyError):
        cli_main.main(["tokenizer", "--text-files", "x", "--vocab-size", "300", "--out", "y"])
    for exc in (DataError("bad input (corrupt_image) at manifest /m.jsonl line 3: x"),
                BadInput("missing_file", "no such file", file="/a.png", where="manifest:/m:2"),
                FileNotFoundError(2, "No such file or directory", "/nope"),
                PermissionError(13, "Permission denied", "/root/w")):
        def fail(args, exc=exc):
            raise exc

        monkeypatch.setattr(tokenizer, "run", fail)
        assert cli_main.main(["tokenizer", "--text-files", "x", "--vocab-size", "300",
                              "--out", "y"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("latentlm: error: ")
    assert cli_main.user_error(FileNotFoundError(2, "No such file or directory", "/nope")) == (
        "No such file or directory: /nope")
    assert cli_main.user_error(BadInput("missing_file", "no such file", file="/a.png",
                                        where="manifest:/m.jsonl:2")) == (
        "bad input (missing_file) at manifest /m.jsonl line 2, file /a.png: no such file")
    assert cli_main.user_error(ValueError("x")) is None


def test_a_file_as_workdir_is_one_line(tmp_path, capsys):
    (tmp_path / "w").write_text("")
    assert cli_main.main(["train", "--config", LM_TINY, "--workdir", str(tmp_path / "w")]) == 2
    assert f"--workdir {tmp_path}/w is a file" in capsys.readouterr().err
    assert cli_main.main(["eval", "--workdir", str(tmp_path / "none")]) == 2
    assert cli_main.main(["reconstruct", "--workdir", str(tmp_path / "none"), "--out", "o"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_data_follows_the_policy(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"good line\n" * 3 + b"bad \xff line\n" + b"good line\n" * 3)
    args = ["bench", "data", "--config", LM_TINY, "--skip-train-step", "--batches", "2",
            "--config.data.source=text_files", f"--config.data.text_files=('{corpus}',)"]
    assert cli_main.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("skipped ") and out[-1].endswith(" (invalid_utf8)")
    assert cli_main.main([*args, "--config.data.bad_input=error"]) == 2
    err = capsys.readouterr().err
    assert f"(invalid_utf8) at text_file {corpus} line 4:" in err
    assert len(err.strip().splitlines()) == 1


def test_skip_summary_helper(capsys):
    counts = {"data/skipped/no_image": 3, "missing_file": 1, "too_large": 0}
    assert skip_summary(counts) == "skipped 3 (no_image), 1 (missing_file)"
    assert skip_summary({}) == ""
    print_skip_summary(counts)
    print_skip_summary({})
    assert capsys.readouterr().out == "skipped 3 (no_image), 1 (missing_file)\n"
