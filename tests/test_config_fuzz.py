"""Config fuzzing (issue 15, item 4): malformed configs, overrides and command arguments through
the real entry point (``cli.main.main``, in-process). Each must end with exit status 2 and exactly
one line on stderr naming the field (or flag) at fault — no traceback — and must leave no workdir
or output behind (an existing workdir unchanged). The trainer is replaced by a tripwire: a case
that reaches it has slipped past the pre-flight checks.

Inputs that are valid (``test_the_valid_baselines_reach_training``) reach the tripwire, so every
case fails for its own reason, not because of the fixture.
"""

from __future__ import annotations

import json
import os

import pytest

from latentlm_jax.cli import main as cli_main
from latentlm_jax.train import trainer
from tests.helpers import LM_TINY, config_path

LATENTLM_TINY = config_path("latentlm_tiny.py")
VAE_IMAGE = config_path("vae_image_tiny.py")
VAE_AUDIO = config_path("vae_audio_tiny.py")
IMAGE_DIM, IMAGE_LEN, AUDIO_DIM, AUDIO_LEN = 8, 16, 16, 25


class Reached(Exception):
    """Raised by the tripwire in place of training."""


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached("training started")
    monkeypatch.setattr(trainer, "train", reached)


def _run(name: str, config: dict, step: int | None = 7) -> str:
    os.makedirs(name)
    with open(os.path.join(name, "config.json"), "w") as f:
        json.dump(config, f)
    if step is not None:
        os.makedirs(os.path.join(name, "checkpoints", str(step)))
    return name


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, str]:
    """Latents as `latentlm encode` leaves them (placeholder shards, real stats) and run folders
    with a config.json and a checkpoint step folder: σ-VAEs, a text LM, one without checkpoints."""
    root = tmp_path_factory.mktemp("fuzz")
    lat = root / "latents"
    lat.mkdir()
    for name, dim, length in (("image", IMAGE_DIM, IMAGE_LEN), ("audio", AUDIO_DIM, AUDIO_LEN)):
        (lat / f"latents-{name}-00000-of-00001.array_record").write_bytes(b"")
        (lat / f"stats-{name}.json").write_text(json.dumps(
            {"modality": name, "latent_dim": dim, "sequence_length": length, "stored": "mean",
             "mean": [0.0] * dim, "std": [1.0] * dim, "sigma_std": 0.9375}))
    out = {"root": str(root), "latents": str(lat)}
    out["vae_image"] = _run(str(root / "vae_image"),
                            {"task": "vae_image", "vae": {"image": {"latent_dim": IMAGE_DIM}}})
    out["vae_audio"] = _run(str(root / "vae_audio"),
                            {"task": "vae_audio", "vae": {"audio": {"latent_dim": AUDIO_DIM}}})
    out["vae_image_4"] = _run(str(root / "vae_image_4"),
                              {"task": "vae_image", "vae": {"image": {"latent_dim": 4}}})
    out["vae_untrained"] = _run(str(root / "vae_untrained"),
                                {"task": "vae_image", "vae": {"image": {"latent_dim": 8}}},
                                step=None)
    out["lm_run"] = _run(str(root / "lm_run"), {"task": "lm", "model": {"emb_dim": 64}})
    (root / "empty").mkdir()
    out["empty"] = str(root / "empty")
    (root / "a_file").write_text("x")
    (root / "bad.py").write_text("def get_config(:\n")
    (root / "typed.py").write_text("from latentlm_jax.config.base import base_config\n"
                                   "def get_config():\n    c = base_config()\n"
                                   "    c.model.vocab_size = 'big'\n    return c\n")
    (root / "extra.py").write_text("from latentlm_jax.config.base import base_config\n"
                                   "def get_config():\n    c = base_config()\n"
                                   "    c.model.dropout = 0.1\n    return c\n")
    (root / "noget.py").write_text("x = 1\n")
    (root / "prompts.jsonl").write_text('{"prompt": "a red circle", "count": "many"}\n')
    (root / "prompts_bad.jsonl").write_text("{not json\n")
    (root / "prompts_empty.txt").write_text("\n\n")
    (root / "prompts_latin1.txt").write_bytes(b"caf\xe9\n")
    return out


def latentlm_args(fx: dict[str, str]) -> list[str]:
    lat = fx["latents"]
    return ["--config", LATENTLM_TINY,
            f"--config.data.latent_files=('{lat}/latents-image-*.array_record', "
            f"'{lat}/latents-audio-*.array_record')",
            f"--config.data.latent_stats_dir={lat}",
            f"--config.data.image_vae_workdir={fx['vae_image']}",
            f"--config.data.audio_vae_workdir={fx['vae_audio']}"]


def assert_one_line(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentlm: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _snapshot(path: str) -> dict[str, bytes] | None:
    if not os.path.exists(path):
        return None
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
        out[os.path.relpath(dirpath, path) + "/"] = b""
    return out


# ------------------------------------------------------------------------------ `latentlm train`
# (config, overrides, fragment the one line must hold: the field, and the problem)
LM = [
    # wrong types
    ("lm", ["--config.train.num_steps=abc"], "config.train.num_steps: expected int"),
    ("lm", ["--config.model.scan_layers=maybe"], "config.model.scan_layers: expected bool"),
    ("lm", ["--config.train.learning_rate=fast"], "config.train.learning_rate: expected float"),
    ("lm", ["--config.data.text_files=5"], "config.data.text_files: expected tuple"),
    ("lm", ["--config.model.emb_dim=3.5"], "config.model.emb_dim: expected int"),
    ("typed", [], "vocab_size"),
    ("bad", [], "cannot load config file"),
    ("noget", [], "defines no get_config()"),
    ("missing", [], "config file not found"),
    # unknown keys, groups, missing values
    ("lm", ["--config.model.emb_dimm=32"], "config.model.emb_dimm: unknown key"),
    ("lm", ["--config.nosuch.x=1"], "config.nosuch: unknown key"),
    ("extra", [], "config.model.dropout: unknown key"),
    ("lm", ["--config.model=3"], "config.model: is a group"),
    ("lm", ["--config.train.num_steps"], "config.train.num_steps: override needs a value"),
    # impossible meshes (8 host devices in the tests)
    ("lm", ["--config.mesh.ici.data=3"], "config.mesh.ici:"),
    ("lm", ["--config.mesh.ici.tensor=0"], "config.mesh.ici.tensor: must be positive or -1"),
    ("lm", ["--config.mesh.ici.fsdp=-1"], "config.mesh.ici: at most one axis may be -1"),
    ("lm", ["--config.mesh.ici.pipeline=2"], "config.mesh.ici.pipeline: unknown key"),
    ("lm", ["--config.mesh.dcn.data=2"], "config.mesh"),
    ("lm", ["--config.sharding_rules=(('batch', 'pipe'),)"], "config.sharding_rules[0]"),
    ("lm", ["--config.mesh.axes=('data', 'fsdp')"], "config.sharding_rules[1]: mesh axis "
                                                    "'context'"),
    # batch divisibility: data parallelism (8) and accumulation
    ("lm", ["--config.train.global_batch_size=12"], "config.train.global_batch_size"),
    ("lm", ["--config.train.grad_accum_steps=3"], "config.train.grad_accum_steps"),
    ("lm", ["--config.train.global_batch_size=16", "--config.train.grad_accum_steps=4"],
     "config.train"),
    # vocabulary
    ("lm", ["--config.model.vocab_size=4"], "config.model.vocab_size: 4 cannot hold the 8 special"),
    ("lm", ["--config.model.vocab_size=200"], "config.model.vocab_size=264"),
    ("lm", ["--config.model.vocab_size=0"], "config.model.vocab_size: must be positive"),
    ("lm", ["--config.data.tokenizer=sentencepiece"], "config.data.tokenizer_model: required"),
    ("lm", ["--config.data.tokenizer=sentencepiece", "--config.data.tokenizer_model=/nope.model"],
     "config.data.tokenizer_model: no such file"),
    # negative or out-of-range rates and sizes
    ("lm", ["--config.train.learning_rate=-1e-3"], "config.train.learning_rate: must be positive"),
    ("lm", ["--config.train.warmup_steps=-5"], "config.train.warmup_steps: must be ≥ 0"),
    ("lm", ["--config.train.ema_decay=1.5"], "config.train.ema_decay: must be in [0, 1)"),
    ("lm", ["--config.train.weight_decay=-0.1"], "config.train.grad_clip"),
    ("lm", ["--config.train.min_lr_ratio=2"], "config.train.min_lr_ratio: must be in [0, 1]"),
    ("lm", ["--config.train.b2=1.0"], "config.train.b1: Adam betas"),
    ("lm", ["--config.data.cond_drop=-0.1"], "config.data.cond_drop: must be in [0, 1)"),
    ("lm", ["--config.checkpoint.every_minutes=-1"], "config.checkpoint.every_minutes"),
    ("lm", ["--config.checkpoint.keep=0"], "config.checkpoint.keep: must be positive"),
    ("lm", ["--config.data.seq_len=0"], "config.data.seq_len: must be positive"),
    ("lm", ["--config.model.num_heads=5"], "config.model.num_heads: 5 heads are not divisible"),
    ("lm", ["--config.model.head_dim=7"], "config.model.head_dim: must be even"),
    ("lm", ["--config.model.dtype=float8"], "config.model.dtype: must be one of"),
    ("lm", ["--config.task=vae_video"], "config.task: must be one of"),
    ("lm", ["--config.data.source=nowhere"], "config.data.source: must be one of"),
    ("lm", ["--config.data.bad_input=ignore"], "config.data.bad_input: must be one of"),
    ("lm", ["--config.data.source=manifest"], "config.data.manifest: required"),
    ("lm", ["--config.data.source=manifest", "--config.data.manifest=/nope.jsonl"],
     "config.data.manifest: no such file"),
    ("lm", ["--config.train.eval_every=5", "--config.data.eval_split=train"],
     "config.data.eval_split"),
    # task weights
    ("lm", ["--config.data.task_weights=text_to_image=0,image_to_text=0"],
     "config.data.task_weights"),
    ("lm", ["--config.data.task_weights=nosuch=1"], "config.data.task_weights"),
    ("lm", ["--config.data.task_weights=text_to_image=-1"], "config.data.task_weights"),
    ("lm", ["--config.data.task_weights=text_to_image"], "config.data.task_weights"),
    # σ-VAE configs
    ("vae_image", ["--config.data.image_resolution=64", "--config.data.source=manifest",
                   "--config.data.manifest=/nope.jsonl"], "config.data.image_resolution: 64"),
    ("vae_image", ["--config.data.source=text_files"], "config.data.source: a vae_image run"),
    ("vae_image", ["--config.vae.kind=gaussian"], "config.vae.kind"),
    ("vae_image", ["--config.vae.image.downsample=3"], "config.vae.image.downsample"),
    ("vae_image", ["--config.vae.image.latent_dim=0"], "config.vae.image.latent_dim"),
    ("vae_image", ["--config.vae.image.channel_mult=()"], "config.vae.image.channel_mult"),
    ("vae_image", ["--config.vae.std=-1"], "config.vae.std"),
    ("vae_audio", ["--config.data.sample_rate=8000", "--config.data.source=manifest",
                   "--config.data.manifest=/nope.jsonl"], "config.data.sample_rate: 8000"),
    ("vae_audio", ["--config.vae.audio.num_samples=1000"], "config.vae.audio.num_samples: 1000"),
    ("vae_audio", ["--config.vae.loss.stft_hops=(32,)"], "config.vae.loss.stft_hops"),
    ("vae_audio", ["--config.vae.audio.representation=mel"], "config.vae.audio.representation"),
    ("vae_audio", ["--config.vae.audio.strides=(0,)"], "config.vae.audio.strides"),
    ("vae_audio", ["--config.vae.loss.recon=l3"], "config.vae.loss.recon"),
]

CONFIGS = {"lm": LM_TINY, "vae_image": VAE_IMAGE, "vae_audio": VAE_AUDIO}


@pytest.mark.parametrize("config, overrides, fragment", LM,
                         ids=[f"{c}:{' '.join(o)}"[:80] for c, o, _ in LM])
def test_a_malformed_config_is_one_line_and_writes_nothing(fx, tmp_path, capsys, config,
                                                           overrides, fragment):
    path = CONFIGS.get(config) or os.path.join(fx["root"], f"{config}.py")
    workdir = str(tmp_path / "w")
    code = cli_main.main(["train", "--config", path, "--workdir", workdir, *overrides])
    assert_one_line(capsys, code, fragment)
    assert not os.path.exists(workdir)


# LatentLM cases on the fixture's latents: (overrides, fragment)
LATENT = [
    (["--config.model.image_latent_dim=4"], "config.model.image_latent_dim: 4, but the image "
                                             "latents"),
    (["--config.model.audio_latent_dim=8"], "config.model.audio_latent_dim"),
    (["--config.model.image_latent_dim=-1"], "config.model.image_latent_dim: must be ≥ 0"),
    (["--config.data.seq_len=16"], "config.data.seq_len: 16 cannot hold one image span"),
    (["--config.model.vocab_size=4"], "config.model.vocab_size"),
    (["--config.data.latent_files=('/nope/latents-*.array_record',)"],
     "config.data.latent_files: no latent shard matches"),
    (["--config.data.image_vae_workdir=/nope/vae"],
     "config.data.image_vae_workdir: /nope/vae does not exist"),
    ("empty", "config.data.image_vae_workdir:"),
    ("lm_run", "config.data.image_vae_workdir:"),
    ("vae_audio", "config.data.image_vae_workdir:"),
    ("vae_image_4", "config.model.image_latent_dim: 8, but the σ-VAE"),
    ("vae_untrained", "holds no checkpoint"),
    (["--config.data.task_weights=text_to_image=0,image_to_text=0,text_to_audio=0,"
      "audio_to_text=0,interleaved=0"], "config.data.task_weights"),
    (["--config.model.diffusion.target_fraction=2"], "config.model.diffusion.target_fraction"),
    (["--config.data.latent_noise=sometimes"], "config.data.latent_noise: must be one of"),
    (["--config.model.diffusion.batch_mul=0"], "config.model.diffusion.batch_mul"),
    (["--config.model.diffusion.loss_weight=-1"], "config.model.head.width"),
    (["--config.data.latents_dir=/nope"], "config.data.latents_dir"),
]


@pytest.mark.parametrize("change, fragment", LATENT,
                         ids=[str(c)[:80] for c, _ in LATENT])
def test_a_malformed_latentlm_config_is_one_line(fx, tmp_path, capsys, change, fragment):
    if isinstance(change, str):  # another run's folder as the image σ-VAE
        change = [f"--config.data.image_vae_workdir={fx[change]}"]
    workdir = str(tmp_path / "w")
    code = cli_main.main(["train", *latentlm_args(fx), "--workdir", workdir, *change])
    assert_one_line(capsys, code, fragment)
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("saved, overrides, fragment", [
    ({"model.emb_dim": 64}, ["--config.model.emb_dim=32"], "config.model.emb_dim: the "
                                                           "checkpoints in"),
    ({"model.vocab_size": 512}, [], "config.model.vocab_size"),
    ({"task": "vae_image"}, [], "config.task"),
    ({"train.ema_decay": 0.999}, [], "config.train.ema_decay"),
])
def test_a_workdir_trained_with_another_model_is_one_line_and_unchanged(
        tmp_path, capsys, saved, overrides, fragment):
    from latentlm_jax.config.loading import apply_overrides, load_config_file

    config = load_config_file(LM_TINY)
    apply_overrides(config, [f"{k}={v}" for k, v in saved.items()])
    workdir = _run(str(tmp_path / "w"), config.to_dict(), step=100)
    before = _snapshot(workdir)
    code = cli_main.main(["train", "--config", LM_TINY, "--workdir", workdir, *overrides])
    line = assert_one_line(capsys, code, fragment, "new --workdir")
    assert "resume with --config." in line
    assert _snapshot(workdir) == before


def test_the_valid_baselines_reach_training(fx, tmp_path, capsys):
    """The fixtures are valid: each case above fails for its own reason. Resuming with the same
    model but other training settings (steps, rates, attention) is allowed."""
    from latentlm_jax.config.loading import load_config_file

    runs = [["--config", LM_TINY], latentlm_args(fx), ["--config", VAE_IMAGE],
            ["--config", VAE_AUDIO]]
    for i, args in enumerate(runs):
        with pytest.raises(Reached):
            cli_main.main(["train", *args, "--workdir", str(tmp_path / f"w{i}")])
    workdir = _run(str(tmp_path / "resume"), load_config_file(LM_TINY).to_dict(), step=100)
    with pytest.raises(Reached):
        cli_main.main(["train", "--config", LM_TINY, "--workdir", workdir,
                       "--config.train.num_steps=5000", "--config.train.learning_rate=1e-4",
                       "--config.model.attention=dot_product", "--config.model.dtype=bfloat16"])
    older = load_config_file(LM_TINY).to_dict()  # a run made before some fields existed
    del older["train"], older["model"]["tie_embeddings"], older["model"]["head"]["mlp_ratio"]
    with pytest.raises(Reached):
        cli_main.main(["train", "--config", LM_TINY, "--workdir",
                       _run(str(tmp_path / "older"), older, step=100)])


# ------------------------------------------------------------------------------ other commands
def _commands(fx: dict[str, str], tmp: str) -> list[tuple[list[str], str]]:
    r, lm, vae = fx["root"], fx["lm_run"], fx["vae_image"]
    gen = ["generate", "--prompt", "a red circle", "--modality", "image", "--out", f"{tmp}/o"]
    return [
        # generate
        ([*gen, "--workdir", f"{r}/nope"], "nope"),
        ([*gen, "--workdir", f"{r}/empty"], "config.json"),
        ([*gen, "--workdir", fx["vae_untrained"]], "checkpoint"),
        ([*gen, "--workdir", lm, "--devices", "0"], "--devices"),
        ([*gen, "--workdir", lm, "--devices", "lots"], "--devices"),
        ([*gen, "--workdir", lm, "--devices", "99"], "--devices 99"),
        ([*gen, "--workdir", lm, "--num-samples", "0"], "--num-samples"),
        ([*gen, "--workdir", lm, "--modality", "video"], "--modality"),
        ([*gen, "--workdir", lm, "--steps", "0"], "--steps"),
        ([*gen, "--workdir", lm, "--out", f"{r}/a_file"], "--out"),
        (["generate", "--workdir", lm, "--prompt", " ", "--modality", "image", "--out",
          f"{tmp}/o"], "--prompt"),
        (["generate", "--workdir", lm, "--prompts-file", f"{r}/nope.txt", "--modality", "image",
          "--out", f"{tmp}/o"], "--prompts-file"),
        (["generate", "--workdir", lm, "--prompts-file", f"{r}/prompts_bad.jsonl", "--out",
          f"{tmp}/o"], "prompts_bad.jsonl line 1"),
        (["generate", "--workdir", lm, "--prompts-file", f"{r}/prompts.jsonl", "--out",
          f"{tmp}/o"], "prompts.jsonl line 1"),
        (["generate", "--workdir", lm, "--prompts-file", f"{r}/prompts_empty.txt",
          "--modality", "image", "--out", f"{tmp}/o"], "holds no prompts"),
        (["generate", "--workdir", lm, "--prompts-file", f"{r}/prompts_latin1.txt",
          "--modality", "image", "--out", f"{tmp}/o"], "not valid UTF-8"),
        (["generate", "--workdir", lm, "--modality", "text", "--image", f"{r}/nope.png"],
         "nope.png"),
        # encode
        (["encode", "--vae-workdir", f"{r}/nope", "--out", f"{tmp}/o"], "nope"),
        (["encode", "--vae-workdir", lm, "--out", f"{tmp}/o"], "σ-VAE"),
        (["encode", "--vae-workdir", fx["vae_untrained"], "--out", f"{tmp}/o"], "checkpoint"),
        (["encode", "--vae-workdir", vae, "--out", f"{tmp}/o", "--num-examples", "0"],
         "--num-examples"),
        (["encode", "--vae-workdir", vae, "--out", f"{tmp}/o", "--batch-size", "0"],
         "--batch-size"),
        (["encode", "--vae-workdir", vae, "--out", f"{r}/a_file"], "--out"),
        (["encode", "--vae-workdir", vae, "--out", f"{tmp}/o", "--config", f"{r}/nope.py"],
         "config file not found"),
        # eval
        (["eval", "--workdir", f"{r}/nope"], "nope"),
        (["eval", "--workdir", lm], "σ-VAE"),
        (["eval", "--workdir", fx["vae_untrained"]], "checkpoint"),
        (["eval", "--workdir", vae, "--examples", "0"], "--examples"),
        (["eval", "--workdir", vae, "--devices", "x"], "--devices"),
        # export
        (["export", "--workdir", f"{r}/nope", "--out", f"{tmp}/o"], "nope"),
        (["export", "--workdir", f"{r}/empty", "--out", f"{tmp}/o"], "config.json"),
        (["export", "--workdir", fx["vae_untrained"], "--out", f"{tmp}/o"], "checkpoint"),
        (["export", "--workdir", vae, "--out", f"{r}/a_file"], "--out"),
        (["export", "--workdir", vae, "--out", f"{tmp}/o", "--step", "-3"], "--step"),
    ]


N_COMMANDS = 34


def test_command_cases_are_counted(fx, tmp_path):
    assert len(_commands(fx, str(tmp_path))) == N_COMMANDS


@pytest.mark.parametrize("index", range(N_COMMANDS))
def test_bad_command_arguments_are_one_line_and_write_nothing(fx, tmp_path, capsys, index):
    args, fragment = _commands(fx, str(tmp_path))[index]
    before = {k: _snapshot(fx[k]) for k in ("lm_run", "vae_image", "vae_untrained")}
    code = cli_main.main(args)
    assert_one_line(capsys, code, fragment)
    assert not os.path.exists(tmp_path / "o")
    assert {k: _snapshot(fx[k]) for k in before} == before
