"""Config loading, overrides and validation; the CLI's one-line errors with exit status 2."""

import os
import subprocess

import pytest

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import (
    ConfigError,
    apply_overrides,
    load_config_file,
    split_config_args,
)
from latentlm_jax.config.validate import validate
from latentlm_jax.parallel.mesh_check import check_mesh
from tests.helpers import LM_TINY, ROOT, config_path, latentlm_command, one_device_env


def test_overrides_are_typed():
    c = base_config()
    apply_overrides(c, ["model.num_layers=7", "train.learning_rate=3e-4", "model.scan_layers=false",
                        "model.dtype=bfloat16", "data.text_files=('a.txt', 'b.txt')",
                        "train.learning_rate=1"])
    assert c.model.num_layers == 7 and isinstance(c.model.num_layers, int)
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)
    assert c.model.scan_layers is False
    assert c.model.dtype == "bfloat16"
    assert c.data.text_files == ("a.txt", "b.txt")


@pytest.mark.parametrize("override,field", [
    ("model.num_layer=3", "model.num_layer"),
    ("modle.num_layers=3", "modle"),
    ("model.num_layers=three", "model.num_layers"),
    ("model.scan_layers=maybe", "model.scan_layers"),
    ("model=3", "model"),
])
def test_bad_overrides_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        apply_overrides(base_config(), [override])
    assert e.value.field == field


def test_split_config_args():
    rest, ov = split_config_args(["--config", "x.py", "--config.a.b=1", "--workdir", "w",
                                  "--config.c", "2"])
    assert rest == ["--config", "x.py", "--workdir", "w"]
    assert ov == ["a.b=1", "c=2"]


def _fails(field_fragment, **changes):
    c = base_config()
    for dotted, value in changes.items():
        node = c
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        with node.unlocked():
            node[keys[-1]] = value
    with pytest.raises(ConfigError) as e:
        validate(c)
        check_mesh(c, 8)
    assert field_fragment in str(e.value), str(e.value)
    return str(e.value)


def test_validation_errors():
    msg = _fails("model.num_heads", model__num_heads=6, model__num_kv_heads=4)
    assert "divisible" in msg
    _fails("model.emb_dim", model__emb_dim=0)
    _fails("model.num_layers", model__num_layers=-2)
    _fails("model.dtype", model__dtype="float16")
    _fails("train.global_batch_size", train__global_batch_size=12)  # 8 devices on data
    _fails("mesh.ici", mesh__ici__data=2, mesh__ici__fsdp=2)  # 2·2·1 != 8
    _fails("data.seq_len", data__seq_len=0)
    _fails("train.grad_accum_steps", train__grad_accum_steps=3)


def test_wrong_type_in_a_config_file(tmp_path):
    path = tmp_path / "bad_type.py"
    path.write_text("from latentlm_jax.config.base import base_config\n"
                    "def get_config():\n    c = base_config()\n"
                    "    c.model.vocab_size = 'big'\n    return c\n")
    with pytest.raises(ConfigError, match="vocab_size"):
        load_config_file(str(path))


def test_unknown_key_in_a_config_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from latentlm_jax.config.base import base_config\n"
                    "def get_config():\n    c = base_config()\n"
                    "    c.model.num_layerz = 3\n    return c\n")
    with pytest.raises(ConfigError, match="model.num_layerz: unknown key"):
        validate(load_config_file(str(path)))


def test_mesh_resolution():
    c = base_config()
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = 2, -1, 2
    ici, dcn = check_mesh(c, 8)
    assert ici == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
    assert dcn == {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}
    c.mesh.dcn.data = 2
    ici, dcn = check_mesh(c, 16, num_slices=2)
    assert ici["fsdp"] == 2 and dcn["data"] == 2


def test_real_configs_validate():
    from latentlm_jax.demo.pipeline import check_demo_config

    names = sorted(n for n in os.listdir(os.path.join(ROOT, "configs"))
                   if n.endswith(".py") and not n.startswith("_"))
    assert "demo_fast.py" in names and "latentlm_tiny.py" in names
    for name in names:
        config = load_config_file(config_path(name))
        if name.startswith("demo"):  # the demo's settings: three training configs and more
            check_demo_config(config)
        else:
            validate(config)


@pytest.mark.slow
@pytest.mark.parametrize("args,fragment", [
    (["--config.model.num_heads=5"], "config.model.num_heads:"),
    (["--config.model.emb_dimm=8"], "config.model.emb_dimm: unknown key"),
    (["--config.train.num_steps=ten"], "config.train.num_steps: expected int"),
    (["--config.train.global_batch_size=-4"], "config.train.global_batch_size: must be positive"),
    (["--config.mesh.ici.data=3"], "config.mesh.ici"),
])
def test_cli_reports_one_line_and_exits_2(tmp_path, args, fragment):
    proc = subprocess.run(
        latentlm_command("train", "--config", LM_TINY, "--workdir", str(tmp_path / "w"), *args),
        capture_output=True, text=True, env=one_device_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_missing_latent_shards_are_one_line_before_the_workdir_exists(tmp_path):
    proc = subprocess.run(
        latentlm_command("train", "--config", config_path("latentlm_tiny.py"),
                         "--workdir", str(tmp_path / "w"),
                         f"--config.data.latent_files=('{tmp_path}/none-*.array_record',)"),
        capture_output=True, text=True, env=one_device_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "config.data.latent_files: no latent shard matches" in lines[0]
    assert not (tmp_path / "w").exists()


def test_a_run_saved_before_new_fields_loads_them_at_their_defaults(tmp_path):
    """config.json of an older run lacks fields added since; loading it fills them (nested ones
    too) with their defaults and keeps every value the run saved."""
    import json

    from latentlm_jax.train.checkpoint_io import load_run_config, save_run_config

    c = load_config_file(LM_TINY)
    c.train.num_steps = 7
    save_run_config(c, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["data"]["max_image_pixels"], saved["vae"]["loss"]["stft_floor"], saved["metrics"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = load_run_config(str(tmp_path))
    base = base_config()
    assert loaded.data.max_image_pixels == base.data.max_image_pixels
    assert loaded.vae.loss.stft_floor == base.vae.loss.stft_floor
    assert loaded.metrics.to_dict() == base.metrics.to_dict()
    assert loaded.train.num_steps == 7 and loaded.name == c.name
    validate(loaded)
