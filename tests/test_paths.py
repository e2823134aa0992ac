"""The path layer on the local disk (tests/test_bucket.py runs the same calls on a bucket)."""

from __future__ import annotations

import ast
import os
import pathlib

import pytest

from latentlm_jax import paths


def test_resolve_makes_local_paths_absolute_and_leaves_urls_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.resolve("runs/a") == paths.Path(tmp_path / "runs" / "a")
    assert paths.as_str("~/x") == str(tmp_path / "home" / "x")
    for url in ("gs://bucket/runs/a", "s3://b/k", "gs://bucket/with space/x"):
        assert paths.is_url(url) and paths.as_str(url) == url
        assert os.fspath(paths.join(url, "checkpoints")) == url + "/checkpoints"
    assert not paths.is_url("/abs/gs://x") and not paths.is_url("relative/file.txt")
    assert not os.path.exists(tmp_path / "gs:")


def test_glob_files_local(tmp_path, monkeypatch):
    for rel in ("a/1.txt", "a/2.txt", "a/b/3.txt", "a/b/4.bin"):
        paths.write_text(tmp_path / rel, rel)
    assert paths.glob_files(tmp_path / "a" / "*.txt") == [
        str(tmp_path / "a" / "1.txt"), str(tmp_path / "a" / "2.txt")]
    assert paths.glob_files(f"{tmp_path}/a/**/*.txt") == [
        str(tmp_path / "a" / n) for n in ("1.txt", "2.txt", "b/3.txt")]
    assert paths.glob_files(tmp_path / "a" / "1.txt") == [str(tmp_path / "a" / "1.txt")]
    assert paths.glob_files(tmp_path / "a" / "none.txt") == []
    monkeypatch.chdir(tmp_path)  # relative patterns give absolute paths
    assert paths.glob_files("a/b/*") == [str(tmp_path / "a" / "b" / n) for n in ("3.txt", "4.bin")]
    assert paths.find_files(tmp_path / "a" / "b") == [
        str(tmp_path / "a" / "b" / n) for n in ("3.txt", "4.bin")]
    assert paths.find_files(tmp_path / "nothing") == []


def test_open_file_text_and_binary(tmp_path):
    path = tmp_path / "deep" / "dir" / "f.txt"
    paths.write_text(path, "grüße\n")  # makes the folders
    assert path.read_bytes() == "grüße\n".encode()  # UTF-8 by default
    with paths.open_file(path) as f:
        assert f.read() == "grüße\n"
    with paths.open_file(path, "a") as f:  # appending is fine on a disk
        f.write("more\n")
    with paths.open_file(path, "rb") as f:
        assert f.read() == "grüße\nmore\n".encode()
    paths.write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert paths.read_bytes(tmp_path / "b.bin") == b"\x00\xff"
    assert paths.is_file(path) and not paths.is_file(tmp_path / "deep")
    assert paths.is_dir(tmp_path / "deep") and paths.listdir(tmp_path / "deep") == ["dir"]
    assert sorted(os.listdir(path.parent)) == ["f.txt"]  # write_text left no temporary file
    paths.remove(path)
    paths.remove(path)  # removing what is not there is fine
    assert not paths.exists(path)
    with pytest.raises(FileNotFoundError):
        paths.read_text(path)


def test_append_to_a_url_is_refused():
    with pytest.raises(ValueError, match="cannot append to gs://b/metrics.jsonl"):
        paths.open_file("gs://b/metrics.jsonl", "a")


def test_local_file_for_writing_and_copy(tmp_path):
    target = tmp_path / "out" / "shard.bin"
    with paths.local_file_for_writing(target) as local:
        assert local == str(target) and os.path.isdir(tmp_path / "out")  # the file itself
        with open(local, "wb") as f:
            f.write(b"abc")
    paths.copy_file(target, tmp_path / "copy" / "shard.bin")
    assert (tmp_path / "copy" / "shard.bin").read_bytes() == b"abc"


# Direct file calls outside the path layer, with why each is local by nature. A new one fails this
# test: route it through latentlm_jax/paths.py (tests/test_bucket.py runs the commands on a bucket).
LOCAL_FILE_CALLS = {"open", "os.open", "os.makedirs", "os.mkdir", "os.path.abspath",
                    "os.path.isfile", "os.path.isdir", "os.path.exists", "os.path.getsize",
                    "os.listdir", "os.walk", "os.remove", "os.unlink", "os.replace", "os.rename",
                    "glob.glob", "shutil.copy", "shutil.copyfile", "shutil.rmtree", "np.load",
                    "np.save", "np.savez", "np.savez_compressed"}
ALLOWED = {
    "latentlm_jax/paths.py": None,  # the layer itself
    # config files are Python modules, imported from the local disk
    "latentlm_jax/config/loading.py": {"os.path.isfile"},
    "latentlm_jax/bench/memory.py": {"os.path.isfile"},
    "latentlm_jax/cli/platforms.py": {"glob.glob", "os.path.exists"},  # probes /dev and /sys
    # reads the kernel's huge-page setting and the virtio devices' features in /sys, and checks
    # that an allocator library named in LATENTLM_HOST_MALLOC exists (local: for LD_PRELOAD)
    "latentlm_jax/host_malloc.py": {"open", "os.listdir", "os.path.isfile"},
    # the compiled kernel's cache: a shared library is loaded from the local disk (ctypes/dlopen),
    # built into a temporary file and renamed; /proc/cpuinfo keys it to the CPU
    "latentlm_jax/kernels/cpu_attention.py": {"open", "os.replace", "os.path.exists",
                                              "os.unlink"},
    "latentlm_jax/data/sources.py": {"os.open"},  # the local branch of TextFileSource (pread)
    "latentlm_jax/demo/generation.py": {"np.load", "np.savez_compressed"},  # on paths.open_file
    "latentlm_jax/image_metrics/npz.py": {"np.load", "np.savez"},  # on paths.open_file
}


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _call_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def test_no_file_access_outside_the_path_layer():
    root = pathlib.Path(__file__).resolve().parents[1]
    found = []
    for file in sorted((root / "latentlm_jax").rglob("*.py")):
        rel = file.relative_to(root).as_posix()
        allowed = ALLOWED.get(rel, set())
        if allowed is None:
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = _call_name(node.func)
                if name in LOCAL_FILE_CALLS and name not in allowed:
                    found.append(f"{rel}:{node.lineno}: {name}(...)")
    assert not found, "file access outside latentlm_jax/paths.py:\n" + "\n".join(found)
