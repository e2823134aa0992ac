"""``latentlm generate --prompts-file``: reading prompts files, planning batches, naming files and
listing them in ``manifest.jsonl`` (which reads back as a data manifest); bad requests are one
line with exit status 2."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from latentlm_jax.cli.main import main
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.manifest import ManifestSource
from latentlm_jax.generate.bulk import (
    MANIFEST,
    file_name,
    plan_batches,
    run_batches,
    save_medium,
)
from latentlm_jax.generate.prompts import PromptRequest, read_prompts, single_prompt


def _write(tmp_path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def test_plain_text_file_one_prompt_per_line(tmp_path):
    path = _write(tmp_path, "p.txt", "\ufeffa red circle\r\n\n  \nnotes C4 E4  \n")
    reqs = read_prompts(path, modality="image", count=3, seed=5)
    assert reqs == [PromptRequest(0, 1, "a red circle", "image", 3, 5),
                    PromptRequest(1, 4, "notes C4 E4", "image", 3, 5)]


def test_jsonl_lines_override_the_defaults(tmp_path):
    lines = [{"prompt": "a red circle"}, {"prompt": "notes C4", "modality": "audio", "count": 2},
             {"prompt": "a blue box", "seed": 11}]
    path = _write(tmp_path, "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    reqs = read_prompts(path, modality="image", count=1, seed=0)
    assert [(r.index, r.line, r.modality, r.count, r.seed) for r in reqs] == [
        (0, 1, "image", 1, 0), (1, 2, "audio", 2, 0), (2, 3, "image", 1, 11)]
    # without --modality every line must name one
    with pytest.raises(ConfigError, match=r"p.jsonl line 1: no modality"):
        read_prompts(path, modality=None, count=1, seed=0)


@pytest.mark.parametrize("name,text,fragment", [
    ("p.jsonl", '{"prompt": "ok"}\n{"prompt": "x", "seeds": 3}\n',
     "p.jsonl line 2: unknown key(s) seeds"),
    ("p.jsonl", '{"prompt": "ok"}\n\n[1, 2]\n', "p.jsonl line 3: expected a JSON object"),
    ("p.jsonl", "{oops\n", "p.jsonl line 1: not JSON"),
    ("p.jsonl", '{"prompt": "  "}\n', "p.jsonl line 1: needs a non-empty prompt"),
    ("p.jsonl", '{"prompt": "x", "count": 0}\n', "count must be an integer ≥ 1, got 0"),
    ("p.jsonl", '{"prompt": "x", "count": true}\n', "count must be an integer ≥ 1, got True"),
    ("p.jsonl", '{"prompt": "x", "seed": -1}\n', "seed must be an integer ≥ 0, got -1"),
    ("p.jsonl", '{"prompt": "x", "modality": "text"}\n', "modality must be one of image, audio"),
    ("p.txt", b"fine\n\xff\xfe\n", "p.txt line 2: not valid UTF-8"),
    ("p.txt", "\n \n", "holds no prompts"),
])
def test_bad_prompts_files_name_the_line(tmp_path, name, text, fragment):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as e:
        read_prompts(path, modality="image", count=1, seed=0)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def _reqs(*specs) -> list[PromptRequest]:
    return [PromptRequest(i, i + 1, f"p{i}", m, n, s) for i, (m, n, s) in enumerate(specs)]


def test_batches_group_by_modality_and_seed_and_pad_the_last():
    reqs = _reqs(("image", 3, 0), ("audio", 1, 0), ("image", 2, 0), ("image", 2, 9))
    batches = plan_batches(reqs, batch_size=4)
    got = [(b.modality, b.seed, b.number, b.rows, [(r.index, k) for r, k in b.items])
           for b in batches]
    assert got == [("image", 0, 0, 4, [(0, 0), (0, 1), (0, 2), (2, 0)]),
                   ("image", 0, 1, 4, [(2, 1)]),
                   ("audio", 0, 0, 1, [(1, 0)]),
                   ("image", 9, 0, 2, [(3, 0), (3, 1)])]
    assert batches[1].prompts() == ["p2"] * 4  # padded with its last prompt
    # every sample exactly once
    assert sum(len(b.items) for b in batches) == sum(r.count for r in reqs)
    # a line with its own seed gets the same batch (prompts, rows, key) whatever else is there
    alone = plan_batches([PromptRequest(0, 1, "p3", "image", 2, 9)], batch_size=4)[0]
    assert alone.prompts() == batches[3].prompts() and alone.rows == batches[3].rows
    np.testing.assert_array_equal(jax.random.key_data(alone.key()),
                                  jax.random.key_data(batches[3].key()))
    assert not np.array_equal(jax.random.key_data(batches[0].key()),
                              jax.random.key_data(batches[1].key()))
    with pytest.raises(ValueError):
        plan_batches(reqs, batch_size=0)


def test_file_names_sort_by_prompt_then_sample():
    req = PromptRequest(3, 4, "x", "audio", 1, 0)
    assert file_name(req, 1, num_prompts=12, max_count=4) == "0003_01.wav"
    assert file_name(req, 7, num_prompts=20_000, max_count=150) == "00003_007.wav"


def test_run_batches_writes_files_and_a_manifest_that_reads_back(tmp_path):
    reqs = [single_prompt("a red circle", modality="image", count=2, seed=0),
            PromptRequest(1, 3, "notes C4", "audio", 1, 4)]
    calls = []

    def generate(batch):  # a stand-in for the LatentLM + σ-VAE: images of a constant colour
        calls.append((batch.modality, batch.rows))
        if batch.modality == "image":
            return [(np.full((8, 8, 3), 40 * r, np.uint8), {"latents": 16})
                    for r in range(batch.rows)]
        t = np.arange(800) / 8000
        return [(0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32), {"latents": 5})]

    lines = run_batches(reqs, 2, str(tmp_path), generate,
                        lambda p, m, x: save_medium(p, m, x, 8000),
                        {"step": 3, "cfg_scale": 2.0})
    assert calls == [("image", 2), ("audio", 1)]
    assert [ln.get("image") or ln.get("audio") for ln in lines] == [
        "0000_00.png", "0000_01.png", "0001_00.wav"]
    assert lines[2] == {"text": "notes C4", "audio": "0001_00.wav", "prompt_index": 1, "line": 3,
                        "sample": 0, "modality": "audio", "seed": 4, "batch": 0, "row": 0,
                        "batch_rows": 1, "batch_size": 2, "step": 3, "cfg_scale": 2.0,
                        "latents": 5}
    with open(tmp_path / MANIFEST) as f:
        assert [json.loads(x) for x in f] == lines
    # the list is a data manifest: the files come back with their prompts as captions
    src = ManifestSource(str(tmp_path / MANIFEST), image_resolution=8, sample_rate=8000,
                         num_samples=800)
    assert [src[i]["text"] for i in range(3)] == ["a red circle"] * 2 + ["notes C4"]
    np.testing.assert_array_equal(src[1]["image"], np.full((8, 8, 3), 40, np.uint8))
    t = np.arange(800) / 8000
    np.testing.assert_allclose(src[2]["audio"], 0.5 * np.sin(2 * np.pi * 440 * t), atol=1e-4)


@pytest.mark.parametrize("args,fragment", [
    (["--prompts-file", "P", "--prompt", "x", "--out", "o"], "not both"),
    (["--prompts-file", "/nonexistent.txt", "--modality", "image", "--out", "o"],
     "cannot read --prompts-file /nonexistent.txt"),
    (["--prompts-file", "P", "--modality", "text"], "--modality text captions"),
    (["--prompts-file", "P", "--modality", "image"], "--out DIR is required"),
    (["--prompts-file", "P", "--modality", "image", "--out", "o", "--batch-size", "0"],
     "--batch-size must be ≥ 1"),
    (["--prompt", "x", "--out", "o"], "--modality image|audio|text is required"),
    (["--prompts-file", "P", "--out", "o"], "P line 1: no modality"),
])
def test_bad_requests_are_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    prompts = _write(tmp_path, "P", "a red circle\n")
    args = [prompts if a == "P" else a for a in args]
    fragment = fragment.replace("P line", f"{prompts} line")
    assert main(["generate", "--workdir", str(tmp_path), *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and fragment in err[0], err
