"""Storage faults (issue 15, item 3): an unwritable, missing-parent or full workdir is one line
before anything compiles; a checkpoint write that fails (disk full, injected) stops training with
one line and leaves the previous checkpoint restorable: the same command resumes from it.

Faults are injected by monkeypatching (a full disk cannot be made without root-only tmpfs; these
tests run as any user). Everything runs in-process through the real entry point ``cli.main``."""

from __future__ import annotations

import errno
import json
import os
import threading

import orbax.checkpoint as ocp
import pytest

from latentlm_jax import paths
from latentlm_jax.cli import main as cli_main
from latentlm_jax.train import data_checkpoint, trainer, workdir_check
from tests.helpers import LM_TINY, TINY_MODEL

# lm_tiny shrunk: 4 steps of 8 × 32 tokens, checkpoints at 2 and 4, no MFU calibration
TINY = [f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "--config.data.seq_len=32", "--config.train.global_batch_size=8",
    "--config.train.num_steps=4", "--config.train.warmup_steps=1", "--config.train.log_every=2",
    "--config.train.eval_every=0", "--config.checkpoint.every_steps=2",
    "--config.metrics.peak_tflops_per_device=1.0"]


def train(workdir, *extra: str) -> int:
    return cli_main.main(["train", "--config", LM_TINY, "--workdir", str(workdir), *TINY, *extra])


def one_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentlm: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Pre-flight tests must stop before the trainer (nothing compiles)."""
    def reached(*args, **kwargs):
        raise AssertionError("training started: the pre-flight check did not stop it")
    monkeypatch.setattr(trainer, "train", reached)


def _fail_probe(monkeypatch, err: OSError) -> None:
    real = paths.open_file

    def open_file(path, mode="r", encoding=None):
        if workdir_check.PROBE_NAME in str(path) and "w" in mode:
            raise err
        return real(path, mode, encoding)
    monkeypatch.setattr(paths, "open_file", open_file)


# ------------------------------------------------------------------------------ the write probe
@pytest.mark.parametrize("code, fragment", [
    (errno.ENOSPC, "the disk is full"), (errno.EACCES, "no permission"),
    (errno.EROFS, "read-only")])
def test_an_unusable_workdir_is_one_line_before_compiling(tmp_path, monkeypatch, capsys,
                                                          no_training, code, fragment):
    _fail_probe(monkeypatch, OSError(code, os.strerror(code)))
    assert train(tmp_path / "w") == 2
    one_line(capsys, f"--workdir {tmp_path}/w is not writable: {os.strerror(code)}", fragment)
    assert not (tmp_path / "w" / "config.json").exists()  # the probe fails before config.json


def test_a_missing_parent_is_made_like_mkdir_p(tmp_path, monkeypatch, no_training):
    workdir = tmp_path / "a" / "b" / "w"
    with pytest.raises(AssertionError, match="training started"):
        train(workdir)
    assert workdir.is_dir() and (workdir / "config.json").exists()
    assert [p.name for p in workdir.iterdir()] == ["config.json"]  # the probe file is gone


def test_an_unwritable_parent_is_one_line(tmp_path, capsys, no_training):
    (tmp_path / "file").write_text("")  # a parent that cannot hold folders
    assert train(tmp_path / "file" / "w") == 2
    one_line(capsys, f"--workdir {tmp_path}/file/w is not writable:")


def test_train_itself_probes_before_building_the_model(tmp_path, monkeypatch):
    """Callers of trainer.train other than the CLI (the demo, sweeps) get the same check."""
    from latentlm_jax.config.loading import ConfigError
    from tests.helpers import tiny_lm_config

    _fail_probe(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    monkeypatch.setattr(trainer, "build_setup", lambda *a: pytest.fail("built the model"))
    with pytest.raises(ConfigError, match="is not writable: No space left on device"):
        trainer.train(tiny_lm_config(data=-1), str(tmp_path / "w"))


def test_the_probe_writes_syncs_and_deletes(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    workdir_check.probe_workdir(str(tmp_path / "new" / "w"))
    assert synced and os.listdir(tmp_path / "new" / "w") == []


# ------------------------------------------------------------------------------ checkpoint writes
def _steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


@pytest.mark.slow  # three short training runs (~20 s)
def test_failed_checkpoint_writes_stop_with_one_line_and_the_previous_checkpoint_resumes(
        tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "w"
    # 1. the disk is full when step 4 is saved: the save itself raises
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))
        return real_save(self, step, *args, **kwargs)
    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    assert train(workdir) == 2
    one_line(capsys, "the checkpoint of step 4 could not be written to", "No space left",
             "the checkpoint of step 2 is intact", "re-run the same command")
    assert _steps(workdir) == [2]
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)

    # 2. the resumed run's step-4 write fails in Orbax's background commit (the data iterator's
    # finalize, on Orbax's thread): it comes back at wait_until_finished as the same one line
    real_finalize = data_checkpoint.DataIteratorHandler.finalize
    threads = []

    def failing_commit(self, directory):
        if os.path.basename(os.path.dirname(str(directory))).split(".")[0] == "4":
            threads.append(threading.current_thread())
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return real_finalize(self, directory)
    monkeypatch.setattr(data_checkpoint.DataIteratorHandler, "finalize", failing_commit)
    assert train(workdir) == 2
    err = one_line(capsys, "the checkpoint of step 4 could not be written", "No space left",
                   "the checkpoint of step 2 is intact")
    assert threads and threads[0] is not threading.main_thread()  # it failed asynchronously
    assert _steps(workdir) == [2]
    monkeypatch.setattr(data_checkpoint.DataIteratorHandler, "finalize", real_finalize)

    # 3. the disk has room again: the same command resumes from step 2 and finishes
    assert train(workdir) == 0, err
    out = capsys.readouterr().out
    assert "Resuming from checkpoint at step 2" in out, out
    assert "done: 4 steps" in out and _steps(workdir)[-1] == 4
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 4 and all(m["loss"] == m["loss"] for m in metrics)


def test_storage_causes_are_found_in_the_chain_and_bugs_are_not():
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as e:
        assert "quota" in workdir_check.storage_cause(e)
    ts = ValueError("Error writing local file \"/w/x\": [OSError 28] No space left on device")
    assert "No space left on device" in workdir_check.storage_cause(ts)
    assert workdir_check.storage_cause(ValueError("shape mismatch")) is None
    assert workdir_check.checkpoint_write_error(KeyError("x"), "/w", 3, 2) is None
