"""``latentlm export``: a params-only Orbax checkpoint + config + what decoding needs; generate,
reconstruct and eval load it like a run (identical outputs for a float32 export), onto one device
or a mesh, without the optimizer state.

One module-scoped set of tiny runs: an image σ-VAE without EMA (2 steps), 16 encoded latents, a
LatentLM with EMA (2 steps), and their exports."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from latentlm_jax.cli.main import main
from latentlm_jax.config.loading import ConfigError, load_config_file
from latentlm_jax.data.latents_dir import resolve_latents_dir
from latentlm_jax.parallel.logical import logical_to_mesh_spec
from latentlm_jax.train import state as state_lib
from latentlm_jax.train.checkpoint_io import (
    export_info,
    load_model,
    load_params,
    load_run_config,
    save_run_config,
)
from latentlm_jax.train.export import export_run
from latentlm_jax.train.tasks import get_task
from latentlm_jax.train.trainer import train
from tests.helpers import _test_run, config_path, tiny_model, tiny_vae_run_config

pytestmark = pytest.mark.slow  # trains two tiny runs (~15 s) shared by the module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    one = jax.devices()[:1]
    vae = tiny_vae_run_config()
    vae.train.num_steps = vae.checkpoint.every_steps = 2
    save_run_config(vae, str(root / "vae"))
    train(vae, str(root / "vae"), devices=one)
    assert main(["encode", "--vae-workdir", str(root / "vae"), "--out", str(root / "latents"),
                 "--num-examples", "16", "--batch-size", "16"]) == 0
    lm = load_config_file(config_path("latentlm_tiny.py") + f":{root / 'latents'}")
    tiny_model(lm.model, num_layers=1)
    lm.model.head.depth = 1
    lm.data.seq_len, lm.train.global_batch_size = 48, 4
    lm.train.num_steps = lm.checkpoint.every_steps = 2
    lm.train.warmup_steps, lm.train.log_every, lm.train.ema_decay = 1, 1, 0.5
    _test_run(lm, {})
    resolve_latents_dir(lm)
    save_run_config(lm, str(root / "lm"))
    train(lm, str(root / "lm"), devices=one)
    # exports on one device (the CLI's own, over all devices, is tested below)
    for name, kwargs in (("ex_f32", {}), ("ex_bf16", {"dtype": "bfloat16"}),
                         ("ex_raw", {"use_ema": False})):
        export_run(str(root / "lm"), str(root / name), devices=one, **kwargs)
    return root


def _generate(workdir, out, *extra) -> np.ndarray:
    assert main(["generate", "--workdir", str(workdir), "--modality", "image", "--prompt",
                 "a red", "--num-samples", "2", "--steps", "2", "--out", str(out), *extra]) == 0
    return np.stack([np.asarray(Image.open(out / f"0000_0{i}.png")) for i in range(2)])


def _manifest_weights(out) -> set[str]:
    with open(out / "manifest.jsonl") as f:
        return {json.loads(line)["weights"] for line in f}


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_export_generates_identically_and_is_self_contained(runs, tmp_path):
    info = export_info(str(runs / "ex_f32"))
    assert (info["step"], info["weights"], info["dtype"]) == (2, "ema", "float32")
    assert info["files"] == {"data.image_vae_workdir": "image_vae",
                             "data.latent_stats_dir": "latent_stats"}
    with open(runs / "ex_f32" / "config.json") as f:  # named relative to the export ...
        assert json.load(f)["data"]["image_vae_workdir"] == "image_vae"
    moved = tmp_path / "moved"  # ... so it still works after a move
    os.rename(runs / "ex_f32", moved)
    try:
        config = load_run_config(str(moved))
        assert config.data.image_vae_workdir == str(moved / "image_vae")
        assert export_info(config.data.image_vae_workdir)["weights"] == "raw"  # the σ-VAE had none
        original = _generate(runs / "lm", tmp_path / "a")
        exported = _generate(moved, tmp_path / "b")
        np.testing.assert_array_equal(exported, original)  # bitwise, same seed
        assert original.std() > 0
        assert _manifest_weights(tmp_path / "a") == _manifest_weights(tmp_path / "b") == {"ema"}
        # the manifest names the weights used: an export of the raw ones says so unasked
        _generate(runs / "ex_raw", tmp_path / "r")
        assert _manifest_weights(tmp_path / "r") == {"raw"}
        # the export holds EMA weights only: asking for the raw ones is a one-line error
        assert main(["generate", "--workdir", str(moved), "--modality", "image", "--prompt", "x",
                     "--out", str(tmp_path / "c"), "--no-ema"]) == 2
    finally:
        os.rename(moved, runs / "ex_f32")


def test_ema_by_default_raw_with_no_ema(runs):
    _, ema, _, _, w_ema = load_params(str(runs / "lm"))
    _, raw, _, _, w_raw = load_params(str(runs / "lm"), use_ema=False)
    assert (w_ema, w_raw) == ("ema", "raw")
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(ema), _leaves(raw), strict=True))
    for name, want in (("ex_f32", ema), ("ex_raw", raw)):
        _, got, _, step, _ = load_params(str(runs / name))
        assert step == 2
        for a, b in zip(_leaves(got), _leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)


def test_bfloat16_export_halves_the_weights_and_loads(runs):
    def disk(d):
        return sum(os.path.getsize(os.path.join(a, f)) for a, _, fs in os.walk(d) for f in fs)

    _, f32, *_ = load_params(str(runs / "ex_f32"))
    _, bf16, *_ = load_params(str(runs / "ex_bf16"))
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {np.dtype("bfloat16")}
    assert sum(x.nbytes for x in jax.tree.leaves(bf16)) * 2 == sum(
        x.nbytes for x in jax.tree.leaves(f32))
    assert disk(runs / "ex_bf16" / "params") < 0.6 * disk(runs / "ex_f32" / "params")
    for a, b in zip(_leaves(bf16), _leaves(f32), strict=True):
        np.testing.assert_array_equal(a, b.astype(jax.numpy.bfloat16))
    model, config, _ = load_model(str(runs / "ex_bf16"))  # its σ-VAE is bfloat16 too
    assert hasattr(model, "heads") and config.data.image_vae_workdir.endswith("image_vae")
    _, vae_bf16, *_ = load_params(config.data.image_vae_workdir)
    assert {x.dtype for x in jax.tree.leaves(vae_bf16)} == {np.dtype("bfloat16")}


def test_params_restore_needs_no_optimizer_state(runs):
    """Loading a run reads only the weights: a config whose optimizer state has another tree
    (gradient clipping toggled) still loads them, which a whole-state restore cannot."""
    config = load_run_config(str(runs / "lm"))
    config.train.grad_clip = 0.0 if config.train.grad_clip > 0 else 1.0
    model, _, step = load_model(str(runs / "lm"), config=config)
    _, ema, *_ = load_params(str(runs / "lm"))
    from flax import nnx

    for a, b in zip(_leaves(nnx.state(model, nnx.Param)), _leaves(ema), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.multidevice
def test_loads_sharded_onto_a_mesh(runs):
    config = load_run_config(str(runs / "ex_f32"))
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    _, sharded, *_ = load_params(str(runs / "ex_f32"), mesh=mesh)
    _, single, *_ = load_params(str(runs / "ex_f32"))
    _, _, logical = state_lib.abstract_model(get_task(config), config)
    flat = jax.tree_util.tree_flatten_with_path(
        logical, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    arrays = dict(jax.tree_util.tree_flatten_with_path(sharded)[0])
    split = 0
    for path, names in flat:
        arr = arrays[path]
        want = tuple(logical_to_mesh_spec(names, config.sharding_rules, mesh.axis_names))
        want += (None,) * (arr.ndim - len(want))
        assert arr.sharding.mesh == mesh and tuple(arr.sharding.spec) + (None,) * (
            arr.ndim - len(arr.sharding.spec)) == want, path
        if any(want):  # restored in shards: no device holds the whole array
            split += 1
            assert max(s.data.size for s in arr.addressable_shards) < arr.size
    assert split > 5
    for a, b in zip(_leaves(sharded), _leaves(single), strict=True):
        np.testing.assert_array_equal(a, b)


def test_vae_export_command_reconstructs_identically(runs, tmp_path, capsys):
    out = tmp_path / "vae_export"
    assert main(["export", "--workdir", str(runs / "vae"), "--out", str(out)]) == 0  # 8 devices
    assert f"exported step 2 of {runs / 'vae'} (raw weights" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["config.json", "export.json", "params"]
    for workdir, rec in ((runs / "vae", tmp_path / "r0"), (out, tmp_path / "r1")):
        assert main(["reconstruct", "--workdir", str(workdir), "--out", str(rec),
                     "--examples", "4"]) == 0
    files = sorted(os.listdir(tmp_path / "r0"))
    assert len(files) == 8 and files == sorted(os.listdir(tmp_path / "r1"))
    for f in files:
        assert (tmp_path / "r0" / f).read_bytes() == (tmp_path / "r1" / f).read_bytes(), f
    capsys.readouterr()
    assert main(["eval", "--workdir", str(out), "--examples", "4"]) == 0
    with open(out / "eval" / "vae_eval.json") as f:
        result = json.load(f)
    assert (result["step"], result["task"], result["examples"]) == (2, "vae_image", 4)
    assert f"{result['rows'][0]['psnr']:.4g}" in capsys.readouterr().out


@pytest.mark.parametrize("args,fragment", [
    (["--workdir", "{root}/missing"], "does not exist"),
    (["--workdir", "{root}/vae", "--step", "7"], "has no checkpoint at step 7 (it has 2)"),
    (["--workdir", "{root}/vae", "--ema"], "kept no EMA weights"),
    (["--workdir", "{root}/lm", "--out", "{root}/vae"], "exists and is not empty"),
])
def test_errors_are_one_line(runs, tmp_path, capsys, args, fragment):
    args = [a.format(root=runs) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()


def test_sentencepiece_model_travels_with_the_export(runs, tmp_path):
    """With data.tokenizer = sentencepiece the export carries the .model file and its config
    names the copy inside the export."""
    run = tmp_path / "lm"
    shutil.copytree(runs / "lm" / "checkpoints", run / "checkpoints")
    config = load_run_config(str(runs / "lm"))
    model_file = tmp_path / "spm.model"
    model_file.write_bytes(b"\x00sentencepiece model bytes\xff")
    config.data.tokenizer, config.data.tokenizer_model = "sentencepiece", str(model_file)
    save_run_config(config, str(run))
    export_run(str(run), str(tmp_path / "out"), devices=jax.devices()[:1])
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == model_file.read_bytes()
    loaded = load_run_config(str(tmp_path / "out"))
    assert loaded.data.tokenizer_model == str(tmp_path / "out" / "tokenizer.model")
    model_file.unlink()  # a run whose tokenizer is gone cannot be exported
    with pytest.raises(ConfigError, match="must carry the SentencePiece model"):
        export_run(str(run), str(tmp_path / "out2"))


def test_export_needs_its_decoder(runs, tmp_path):
    """A LatentLM whose σ-VAE is gone cannot make a self-contained export: one line, nothing
    written."""
    config = load_run_config(str(runs / "lm"))
    config.data.image_vae_workdir = str(tmp_path / "gone")
    save_run_config(config, str(tmp_path / "lm"))
    with pytest.raises(ConfigError, match="must carry the σ-VAE"):
        export_run(str(tmp_path / "lm"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --- generate / eval onto a mesh (--devices), and runs trained with a TPU-only kernel --------

def _spy_meshes(monkeypatch) -> list[int]:
    """Records the device count of every mesh ``load_model`` loads onto."""
    from latentlm_jax.generate import codecs
    from latentlm_jax.train import checkpoint_io

    sizes: list[int] = []
    real = checkpoint_io.load_model

    def spy(workdir, **kwargs):
        model, config, step = real(workdir, **kwargs)
        sizes.append(len({d for x in jax.tree.leaves(nnx_state(model)) for d in
                          x.sharding.device_set}))
        return model, config, step

    monkeypatch.setattr(checkpoint_io, "load_model", spy)
    monkeypatch.setattr(codecs, "load_model", spy)  # imported by name there
    return sizes


def nnx_state(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


@pytest.mark.multidevice
def test_generate_and_eval_sharded_over_all_devices_match_one_device(runs, tmp_path,
                                                                      monkeypatch, capsys):
    """--devices all loads the LatentLM and its σ-VAE sharded over the 8 devices and generates
    the same images as one device (float32 on CPU: bitwise on jax 0.10; on 0.12 the sharded
    program sums in another order, and one pixel of 6,144 came out one level apart); eval gives
    the same numbers."""
    sizes = _spy_meshes(monkeypatch)
    one = _generate(runs / "ex_f32", tmp_path / "one")
    assert sizes == [1, 1]  # the LatentLM, then its σ-VAE
    every = _generate(runs / "ex_f32", tmp_path / "all", "--devices", "all")
    assert sizes[2:] == [8, 8]
    apart = np.abs(every.astype(np.int64) - one.astype(np.int64))
    assert apart.max() <= 1 and (apart > 0).mean() < 1e-3, (apart.max(), (apart > 0).sum())
    assert one.std() > 0
    results = []
    for devices in ("1", "8"):
        out = tmp_path / f"vae_{devices}"
        shutil.copytree(runs / "vae", out)  # eval writes into the run's eval/
        assert main(["eval", "--workdir", str(out), "--examples", "4", "--devices", devices]) == 0
        with open(out / "eval" / "vae_eval.json") as f:
            results.append({k: v for k, v in json.load(f).items() if k != "workdir"})
    assert sizes[4:] == [1, 8]
    assert results[0] == results[1] and results[0]["rows"][0]["psnr"] > 0


@pytest.mark.parametrize("devices,fragment", [
    ("0", "--devices must be a positive count or 'all'; got '0'"),
    ("two", "--devices must be a positive count or 'all'; got 'two'"),
    ("9", "--devices 9: this host has only 8 cpu devices"),
])
def test_bad_devices_are_one_line_errors(runs, tmp_path, capsys, devices, fragment):
    for command in (["generate", "--modality", "image", "--prompt", "x", "--out",
                     str(tmp_path / "out")], ["eval", "--examples", "1"]):
        workdir = runs / ("ex_f32" if command[0] == "generate" else "vae")
        assert main([*command, "--workdir", str(workdir), "--devices", devices]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and fragment in lines[0], lines


def test_splash_run_runs_off_tpu_with_dot_product(runs, tmp_path, capsys):
    """A run trained with the TPU-only splash kernel loads on CPU with dot_product (announced in
    one line) and computes what the same weights do with the reference kernel; its config and
    load_params (what export writes) still say splash."""
    from flax import nnx

    run = tmp_path / "splash"
    shutil.copytree(runs / "lm" / "checkpoints", run / "checkpoints")
    config = load_run_config(str(runs / "lm"))
    assert config.model.attention == "xla"
    config.model.attention = "splash"
    save_run_config(config, str(run))
    capsys.readouterr()
    model, loaded, _ = load_model(str(run))
    err = capsys.readouterr().err
    assert err == ("attention: the run used 'splash' (TPU only); running it with 'dot_product' "
                   "on cpu\n")
    assert loaded.model.attention == "dot_product"
    assert load_run_config(str(run)).model.attention == "splash"  # the run is unchanged
    reference, _, _ = load_model(str(runs / "lm"))
    assert capsys.readouterr().err == ""  # nothing to say for a kernel every platform has
    graphdef, params, *_ = load_params(str(run))  # the model exactly as trained: splash
    c = config.model
    x = jax.random.normal(jax.random.key(0), (2, 16, c.emb_dim))
    positions = jax.numpy.broadcast_to(jax.numpy.arange(16), (2, 16))
    segments = jax.numpy.asarray([[1] * 16, [1] * 9 + [2] * 5 + [0] * 2])
    with pytest.raises(ConfigError, match="'splash' runs only on TPU"):
        nnx.merge(graphdef, params).decoder(x, positions, segments)
    np.testing.assert_allclose(model.decoder(x, positions, segments),
                               reference.decoder(x, positions, segments), rtol=1e-5, atol=1e-5)
    got = _generate(run, tmp_path / "a")
    assert "running it with 'dot_product' on cpu" in capsys.readouterr().err
    want = _generate(runs / "lm", tmp_path / "b")
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
