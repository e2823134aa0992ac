"""Everything through a bucket: ``gs://`` workdirs, data and outputs against an in-memory Google
Cloud Storage emulator (``gcp-storage-emulator``, a test extra) on 127.0.0.1, so a local-only
file call cannot creep back into train → resume → encode → generate.

gcsfs (``etils.epath``'s backend for ``gs://``: config.json, metrics, TensorBoard, manifests, media,
latents, samples) reaches the emulator through ``STORAGE_EMULATOR_HOST`` with anonymous credentials;
TensorStore (Orbax's array data) through ``TENSORSTORE_GCS_HTTP_URL`` with a fixed test token. No
Google host and no metadata server is contacted: the metadata server is pointed at 127.0.0.1:1, and
any other HTTP(S) request goes to a proxy at 127.0.0.1:1 that refuses it; the clients retry such a
request, so every command runs under a timeout: a stray call fails the test, it does not hang it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess

import numpy as np
import pytest

from latentlm_jax import paths
from tests.helpers import ROOT, config_path, latentlm_command, one_device_env

emulator = pytest.importorskip("gcp_storage_emulator.server",
                               reason="needs the test extra (gcp-storage-emulator)")
BUCKET = "latentlm-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bucket_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (and google-cloud-storage)
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credential lookup
        # gcsfs ≥ 2025.x asks a gRPC control API for the bucket type first (60 s timeout)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,  # Orbax's array data
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",  # TensorStore: no credential lookup
        "GCE_METADATA_ROOT": "127.0.0.1:1", "GCE_METADATA_HOST": "127.0.0.1:1",
        "GCE_METADATA_IP": "127.0.0.1:1", "NO_GCE_CHECK": "true",
        "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": "/nonexistent",
        "https_proxy": "http://127.0.0.1:1", "HTTPS_PROXY": "http://127.0.0.1:1",
        "http_proxy": "http://127.0.0.1:1", "HTTP_PROXY": "http://127.0.0.1:1",
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
    }


def _patch_emulator() -> None:
    """GCS sends an object's generation with its bytes (``x-goog-generation``); TensorStore's
    conditional writes (Orbax's OCDBT manifest) need it, and the emulator leaves it out."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.download, "patched", False):
        return
    plain = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
        except Exception:  # not there: the handler answers 404
            obj = None
        plain(request, response, storage, *args, **kwargs)
        if obj is not None:
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    download.patched = True
    objects.download = download  # objects.get (alt=media) calls it by name
    server.HANDLERS = tuple((regex, {m: download if f is plain else f for m, f in h.items()})
                            for regex, h in server.HANDLERS)


@pytest.fixture(scope="module")
def bucket():
    """``gs://BUCKET`` in an emulator running in this process; this process's environment (and
    so its subprocesses') points gcsfs and TensorStore at it."""
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    _patch_emulator()
    url = f"http://127.0.0.1:{_free_port()}"
    server = emulator.create_server("127.0.0.1", int(url.rsplit(":", 1)[1]), in_memory=True,
                                    default_bucket=BUCKET)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in bucket_env(url).items():
            mp.setenv(k, v)
        try:
            yield f"gs://{BUCKET}"
        finally:
            server.stop()


def names(url: str) -> list[str]:
    """Every object under ``url``, relative to it."""
    return [p[len(url) + 1:] for p in paths.find_files(url)]


# ----------------------------------------------------------------------------- the path layer
def test_path_layer_on_a_bucket(bucket):
    base = f"{bucket}/unit"
    paths.write_text(f"{base}/a/one.txt", "eins\n")
    paths.write_bytes(f"{base}/a/b/two.bin", b"\x00\x01")
    paths.write_text(f"{base}/three.txt", "drei")
    assert paths.resolve(f"{base}/a") == paths.Path(f"{base}/a")  # never made local
    assert paths.read_text(f"{base}/a/one.txt") == "eins\n"
    with paths.open_file(f"{base}/a/b/two.bin", "rb") as f:
        assert f.read() == b"\x00\x01"
    assert paths.glob_files(f"{base}/*.txt") == [f"{base}/three.txt"]
    assert paths.glob_files(f"{base}/a/**/*.bin") == [f"{base}/a/b/two.bin"]
    assert paths.glob_files(f"{base}/a/one.txt") == [f"{base}/a/one.txt"]
    assert paths.glob_files(f"{base}/*.none") == []
    assert paths.is_file(f"{base}/a/one.txt") and not paths.is_file(f"{base}/a")
    assert paths.is_dir(f"{base}/a") and paths.listdir(f"{base}/a") == ["b", "one.txt"]
    with pytest.raises(ValueError, match="cannot append"):
        paths.open_file(f"{base}/a/one.txt", "a")
    with paths.local_file_for_writing(f"{base}/staged.bin") as local:
        assert not paths.is_url(local)
        with open(local, "wb") as f:
            f.write(b"staged")
    assert paths.read_bytes(f"{base}/staged.bin") == b"staged" and not os.path.exists(local)
    paths.copy_file(f"{base}/staged.bin", f"{base}/copy/staged.bin")
    assert paths.read_bytes(f"{base}/copy/staged.bin") == b"staged"


def test_text_files_and_manifest_in_a_bucket(bucket):
    """data.text_files globs and a manifest with relative media paths, read from the bucket."""
    from latentlm_jax.data.manifest import ManifestSource
    from latentlm_jax.data.photo_like import write_manifest
    from latentlm_jax.data.sources import TextFileSource

    base = f"{bucket}/corpus"
    paths.write_text(f"{base}/a.txt", "first doc\n\nsecond doc\n")
    paths.write_text(f"{base}/sub/b.txt", "\ufeffthird doc")
    source = TextFileSource([f"{base}/**/*.txt"])
    assert source.paths == [f"{base}/a.txt", f"{base}/sub/b.txt"]
    assert [source[i]["text"] for i in range(len(source))] == [
        "first doc", "second doc", "third doc"]
    assert source[2]["source"] == f"text_file:{base}/sub/b.txt:1"
    manifest = write_manifest(f"{bucket}/photos", images=2, seed=3)
    examples = ManifestSource(manifest, image_resolution=32, sample_rate=16000, num_samples=0)
    assert examples.root == f"{bucket}/photos" and len(examples) == 2
    example = examples[1]
    assert example["image"].shape == (32, 32, 3) and example["text"]
    assert example["source"] == f"manifest:{manifest}:2"


def test_sentencepiece_from_and_to_a_bucket(bucket):
    """Training text in the bucket is streamed to SentencePiece; the model lands in the bucket
    and loads from there (from bytes)."""
    from latentlm_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

    lines = [f"a large red circle in the top left {i}\nnotes C4 E4 G4\nhéllo wörld"
             for i in range(200)]
    paths.write_text(f"{bucket}/spm/corpus.txt", "\n".join(lines) + "\n")
    model = train_sentencepiece([f"{bucket}/spm/corpus.txt"], f"{bucket}/spm/tok", 400)
    assert model == f"{bucket}/spm/tok.model" and paths.is_file(f"{bucket}/spm/tok.vocab")
    tok = SentencePieceTokenizer(model)
    text = "a red circle, héllo ✓"
    assert tok.decode(tok.encode(text)) == text and len(tok.encode("notes C4 E4 G4")) < 10


def test_a_profile_window_lands_in_a_bucket_workdir(bucket):
    """The profiler writes local files: a gs:// workdir gets them copied up when the window ends."""
    import jax
    import jax.numpy as jnp

    from latentlm_jax.train.profiling import StepProfiler
    from tests.helpers import tiny_lm_config

    c = tiny_lm_config()
    c.train.profile_start_step, c.train.profile_steps = 0, 1
    said = []
    workdir = f"{bucket}/profiled"
    profiler = StepProfiler(c, workdir, 0, said.append)
    f = jax.jit(lambda x: jnp.tanh(x @ x))
    profiler.before_step(0)
    assert profiler.active and not paths.is_url(profiler.local)
    state = f(jnp.ones((16, 16)))
    profiler.after_step(1, state)
    assert not profiler.active and not os.path.exists(profiler.local)
    assert any(n.startswith("profile/") and n.endswith(".xplane.pb") for n in names(workdir))
    assert said == [f"profiled steps 1–1 into {workdir}/profile (latentlm profile "
                    f"{workdir}/profile; tensorboard --logdir {workdir}/profile)"]


def test_metrics_writer_rewrites_the_object_on_resume(bucket):
    """metrics.jsonl cannot be appended to in a bucket: a second writer keeps the first's rows;
    TensorBoard's event file lands there too."""
    from latentlm_jax.train.metrics import MetricsWriter

    workdir = f"{bucket}/metrics"
    for steps in ((1, 2), (3,)):
        w = MetricsWriter(workdir, enabled=True)
        for s in steps:
            w.write(s, {"loss": np.float32(s / 10)})
        w.close()
    rows = [json.loads(x) for x in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [(r["step"], round(r["loss"], 3)) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    events = paths.glob_files(f"{workdir}/tensorboard/events.out.tfevents.*")
    assert events and all(b"loss" in paths.read_bytes(e) for e in events)


def test_latent_shards_in_a_bucket_are_refused(bucket):
    """array_record's reader opens local files only: shards named by URL are a one-line config
    error before anything is made (never a silent local copy)."""
    from latentlm_jax.cli.train import check_input_files
    from latentlm_jax.config.loading import ConfigError, load_config_file

    config = load_config_file(config_path("latentlm_tiny.py"))
    config.data.source = "latents"
    config.data.latent_files = (f"{bucket}/latents/latents-image-00000-of-00001.array_record",)
    with pytest.raises(ConfigError, match="^config.data.latent_files: ArrayRecord shards cannot "
                                          "be read from gs://.*gcsfuse"):
        check_input_files(config, f"{bucket}/lm")


# ------------------------------------------------------------------------- end to end, CLI
TINY_VAE = ["--config.vae.image.channels=8", "--config.vae.image.channel_mult=(1, 2)",
            "--config.vae.eval_examples=8"]
TINY_LM = ["--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.mlp_dim=64",
           "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
           "--config.model.head_dim=8", "--config.model.audio_latent_dim=0"]
SHORT = ["--config.train.global_batch_size=8", "--config.train.warmup_steps=1",
         "--config.train.log_every=1", "--config.train.eval_every=0",
         "--config.metrics.peak_tflops_per_device=1.0"]


@pytest.mark.slow
def test_train_resume_encode_generate_in_a_bucket(bucket, tmp_path):
    cwd, staging = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    staging.mkdir()
    # the resumed run compiles the same step as the first: from JAX's cache (a local folder)
    env = dict(one_device_env(), TMPDIR=str(staging),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    def latentlm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(latentlm_command(*args), cwd=cwd, capture_output=True, text=True,
                              env=env, timeout=180)

    def ok(proc: subprocess.CompletedProcess) -> str:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout

    from latentlm_jax.data.photo_like import write_manifest

    manifest = write_manifest(f"{bucket}/data", images=16, seed=1)  # PNGs + manifest in the bucket
    vae, latents, lm, out = (f"{bucket}/{n}" for n in ("vae", "latents", "lm", "samples"))

    # 1. a σ-VAE on the manifest in the bucket, its workdir in the bucket
    ok(latentlm("train", "--config", config_path("vae_image_tiny.py"), "--workdir", vae,
                "--config.data.source=manifest", f"--config.data.manifest={manifest}",
                "--config.train.num_steps=2", "--config.checkpoint.every_steps=2",
                *TINY_VAE, *SHORT, "--config.train.eval_every=2"))  # samples/step_2/
    # 2. latents into the bucket (ArrayRecord written locally, then uploaded)
    printed = ok(latentlm("encode", "--vae-workdir", vae, "--out", latents, "--batch-size", "16"))
    assert "wrote 16 image latent sequences of 16 × 8 (checkpoint step 2)" in printed
    entry = json.loads(paths.read_text(f"{latents}/latents.json"))["modalities"]["image"]
    assert entry["vae_workdir"] == vae and entry["count"] == 16
    # ArrayRecord's reader opens local files only (test_latent_shards_in_a_bucket_are_refused):
    # the LatentLM reads them from a mount of the bucket, gcsfuse's part played by a copy
    lm_args = [*TINY_LM, *SHORT, "--config.checkpoint.every_steps=2"]
    mount = tmp_path / "mount"
    for name in names(latents):
        paths.copy_file(f"{latents}/{name}", mount / name)

    # 3. the LatentLM: workdir in the bucket, 2 steps, then resumed to 4
    lm_train = ["train", "--config", f"{config_path('latentlm_tiny.py')}:{mount}",
                "--workdir", lm, *lm_args]
    ok(latentlm(*lm_train, "--config.train.num_steps=2"))
    printed = ok(latentlm(*lm_train, "--config.train.num_steps=4"))
    assert "Resuming from checkpoint at step 2" in printed
    rows = [json.loads(x) for x in paths.read_text(f"{lm}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    saved = json.loads(paths.read_text(f"{lm}/config.json"))
    assert saved["data"]["image_vae_workdir"] == vae and saved["train"]["num_steps"] == 4

    # 4. generate from the bucket into the bucket
    printed = ok(latentlm("generate", "--workdir", lm, "--prompt", "a red circle, day scene",
                          "--modality", "image", "--num-samples", "2", "--out", out,
                          "--steps", "2"))
    lines = [json.loads(x) for x in paths.read_text(f"{out}/manifest.jsonl").splitlines()]
    assert [(x["image"], x["step"], x["workdir"]) for x in lines] == [
        ("0000_00.png", 4, lm), ("0000_01.png", 4, lm)]
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(paths.read_bytes(f"{out}/0000_00.png"))))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8

    # everything landed in the bucket, nothing on the local disk
    objects = names(bucket)
    for expected in ("vae/config.json", "vae/metrics.jsonl",
                     "vae/samples/step_2/reconstructions.png", "latents/stats-image.json",
                     "latents/latents-image-00000-of-00001.array_record", "lm/config.json"):
        assert expected in objects, expected
    for run in ("vae", "lm"):
        assert any(n.startswith(f"{run}/tensorboard/events.out.tfevents.") for n in objects)
    assert any(n.startswith("vae/checkpoints/2/") for n in objects)
    assert {n.split("/")[2] for n in objects if n.startswith("lm/checkpoints/")} >= {"2", "4"}
    assert os.listdir(cwd) == [] and os.listdir(staging) == []
    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # no URL made into a local path here
