"""FID and Inception Score (``latentlm_jax/image_metrics``, ``latentlm eval-images``; docs/fid.md).

The maths against closed forms and an independent reference (``scipy.linalg.sqrtm``, what
pytorch-fid uses), the resize against PyTorch's bilinear formula written out in NumPy, the
network's structure and output shapes, the weights file (round trip, the pytorch-fid layout, bad
files), and the command end to end with a randomly initialised network: identical sets give
FID ≈ 0, different ones do not. Real weights are never needed (nor downloaded).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from latentlm_jax.cli.main import main
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.image_metrics import fid as F
from latentlm_jax.image_metrics.images import batches
from latentlm_jax.image_metrics.inception import (
    FEATURE_DIM,
    NUM_CLASSES,
    BasicConv2d,
    extract,
    to_inception_input,
)
from latentlm_jax.image_metrics.npz import write_npz
from latentlm_jax.image_metrics.weights import (
    abstract_model,
    convert_torch_state_dict,
    load_weights,
    random_model,
    save_weights,
    weight_arrays,
)

N_IMAGES = 4  # per set: Inception at 299² on a CPU (and a 2048² eigh per FID) is the cost here


# ----------------------------------------------------------------------------------------- maths
def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(want, rel=1e-12)
    assert F.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-12)


def test_frechet_distance_with_full_covariances_matches_the_sqrtm_reference():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    d = 20
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    covmean = sqrtm(s1 @ s2).real  # pytorch-fid's formula
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    # a rank-deficient Σ (fewer samples than dimensions, as with few images): ≈ 0, not NaN
    x = rng.normal(size=(5, d))
    low = np.cov(x, rowvar=False)
    assert abs(F.frechet_distance(x.mean(0), low, x.mean(0), low)) < 1e-6 * np.trace(low)
    with pytest.raises(ValueError, match="mismatched"):
        F.frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_running_stats_match_numpy_over_uneven_batches():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=3.0, size=(37, 6)) * np.arange(1, 7)
    stats = F.RunningStats(6)
    for lo, hi in ((0, 1), (1, 10), (10, 10), (10, 37)):
        stats.update(x[lo:hi])
    assert stats.count == 37
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        _ = F.RunningStats(6).covariance


def test_inception_score_of_uniform_and_of_confident_predictions():
    mean, std = F.inception_score(np.zeros((20, NUM_CLASSES)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    for k in (1, 4, 7):  # every split holds each of k classes equally often: IS = k exactly
        labels = np.arange(10 * k) % k
        logits = 1e4 * np.eye(NUM_CLASSES)[labels]
        mean, std = F.inception_score(logits, splits=10)
        assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # two classes, p(y|x) = (a, 1−a) or (1−a, a) half and half: KL = a·log 2a + (1−a)·log 2(1−a)
    a = 0.8
    logits = np.log(np.array([[a, 1 - a], [1 - a, a]] * 5))
    want = np.exp(a * np.log(2 * a) + (1 - a) * np.log(2 * (1 - a)))
    assert F.inception_score(logits, splits=5)[0] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="at least 10 images"):
        F.inception_score(np.zeros((4, 3)), splits=10)


def test_reference_statistics_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(3)
    stats = F.RunningStats(FEATURE_DIM)
    stats.update(rng.normal(size=(3, FEATURE_DIM)))
    F.save_stats(str(tmp_path / "ref.npz"), stats)
    mu, sigma, count = F.load_stats(str(tmp_path / "ref.npz"), FEATURE_DIM)
    np.testing.assert_array_equal(mu, stats.mean)
    np.testing.assert_array_equal(sigma, stats.covariance)
    assert count == 3
    # pytorch-fid's --save-stats files have mu and sigma only
    write_npz(str(tmp_path / "pf.npz"), {"mu": mu, "sigma": sigma})
    assert F.load_stats(str(tmp_path / "pf.npz"), FEATURE_DIM)[2] is None
    write_npz(str(tmp_path / "small.npz"), {"mu": mu[:64], "sigma": sigma[:64, :64]})
    with pytest.raises(ConfigError, match=r"small\.npz holds mu \(64,\)"):
        F.load_stats(str(tmp_path / "small.npz"), FEATURE_DIM)
    write_npz(str(tmp_path / "nomu.npz"), {"sigma": sigma})
    with pytest.raises(ConfigError, match="has no 'mu' array"):
        F.load_stats(str(tmp_path / "nomu.npz"), FEATURE_DIM)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"junk\.npz is not a readable \.npz"):
        F.load_stats(str(tmp_path / "junk.npz"), FEATURE_DIM)
    with pytest.raises(ConfigError, match=r"no such file: .*absent\.npz"):
        F.load_stats(str(tmp_path / "absent.npz"), FEATURE_DIM)


# --------------------------------------------------------------------------------- preprocessing
def _torch_bilinear_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """``F.interpolate(mode="bilinear", align_corners=False)`` along one axis, written out."""
    n = x.shape[axis]
    src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, i0, axis=axis) * (1 - lam) + np.take(x, i1, axis=axis) * lam


@pytest.mark.parametrize("shape, size", [((7, 5), 11), ((13, 16), 5), ((9, 9), 9)])
def test_resize_is_pytorch_fids_bilinear_without_antialiasing(shape, size):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(2, *shape, 3), dtype=np.uint8)
    want = images.astype(np.float64) / 255.0
    want = _torch_bilinear_axis(_torch_bilinear_axis(want, size, 1), size, 2) * 2 - 1
    got = np.asarray(to_inception_input(jnp.asarray(images), size))
    np.testing.assert_allclose(got, want, atol=2e-6)
    from_floats = to_inception_input(jnp.asarray(images, jnp.float32) / 255.0, size)
    np.testing.assert_allclose(np.asarray(from_floats), got, atol=1e-6)


def test_batches_split_where_the_image_size_changes():
    sizes = [(4, 4)] * 5 + [(6, 4)] * 2 + [(4, 4)]
    out = list(batches(iter(np.zeros((*s, 3), np.uint8) for s in sizes), 3))
    assert [b.shape[:3] for b in out] == [(3, 4, 4), (2, 4, 4), (2, 6, 4), (1, 4, 4)]


# ------------------------------------------------------------------------------- network, weights
@pytest.fixture(scope="module")
def model():
    return random_model(0)


def test_network_has_the_fid_inceptions_structure(model):
    from flax import nnx

    convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, BasicConv2d)]
    assert len(convs) == 94  # Inception-v3 without the auxiliary classifier
    arrays = weight_arrays(model)
    params = sum(a.size for k, a in arrays.items() if not k.endswith(("/mean", "/var")))
    # torchvision's inception_v3(aux_logits=False) has 23,834,568 parameters with 1000 classes;
    # the FID network's 1008 add 8 × (2048 + 1)
    assert params == 23_834_568 + 8 * 2049
    assert arrays["Mixed_7c/branch_pool/conv/kernel"].shape == (1, 1, 2048, 192)
    assert arrays["fc/kernel"].shape == (FEATURE_DIM, NUM_CLASSES)
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool
    assert model.Conv2d_1a_3x3.bn.epsilon == 1e-3


def test_weights_round_trip_and_bad_files(model, tmp_path):
    path = str(tmp_path / "w.npz")
    save_weights(model, path)
    other = random_model(1)
    before = weight_arrays(other)
    load_weights(other, path)
    after, want = weight_arrays(other), weight_arrays(model)
    assert not np.array_equal(before["fc/kernel"], want["fc/kernel"])
    assert after.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(after[k], want[k])
    fresh = abstract_model()  # what the command loads into: shapes only until loaded
    load_weights(fresh, path)
    loaded = weight_arrays(fresh)
    for k in want:
        np.testing.assert_array_equal(loaded[k], want[k])

    def bad(arrays: dict, match: str) -> None:
        write_npz(str(tmp_path / "bad.npz"), arrays)
        with pytest.raises(ConfigError, match=match):
            load_weights(other, str(tmp_path / "bad.npz"))

    bad({k: v for k, v in want.items() if k != "fc/bias"},
        r"bad\.npz lacks 1 of the network's \d+ arrays \(first: fc/bias\)")
    bad({**want, "aux/kernel": np.zeros(3, np.float32)}, r"bad\.npz has 1 arrays .*aux/kernel")
    bad({**want, "fc/bias": np.zeros(1000, np.float32)},
        r"bad\.npz: fc/bias has shape \(1000,\), the network expects \(1008,\)")
    bad({**want, "fc/bias": np.full(1008, np.nan, np.float32)}, "not finite")
    with pytest.raises(ConfigError, match=r"Inception weights: no such file: .*none\.npz"):
        load_weights(other, str(tmp_path / "none.npz"))


def test_pytorch_fid_state_dict_converts_to_the_same_arrays(model):
    want = weight_arrays(model)
    torch_layout = {"fc.weight": want["fc/kernel"].T, "fc.bias": want["fc/bias"]}
    leaves = {"conv/kernel": "conv.weight", "bn/scale": "bn.weight", "bn/bias": "bn.bias",
              "bn/mean": "bn.running_mean", "bn/var": "bn.running_var"}
    for name, a in want.items():
        for ours, theirs in leaves.items():
            if name.endswith("/" + ours):
                key = name[: -len(ours)].replace("/", ".") + theirs
                torch_layout[key] = a.transpose(3, 2, 0, 1) if ours == "conv/kernel" else a
                if ours == "bn/mean":
                    torch_layout[key.replace("running_mean", "num_batches_tracked")] = \
                        np.asarray(0)
    assert "Mixed_6b.branch7x7_2.conv.weight" in torch_layout  # torchvision's names
    assert torch_layout["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    got = convert_torch_state_dict(torch_layout)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ConfigError, match="unexpected key 'AuxLogits.fc.weight'"):
        convert_torch_state_dict({**torch_layout, "AuxLogits.fc.weight": np.zeros((2, 2))})


# ------------------------------------------------------------------------------- the command
def _write_images(folder, seed: int, n: int = N_IMAGES) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        base = rng.integers(0, 256, size=3)
        noise = rng.integers(-60, 60, size=(32, 32, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_images")
    names = _write_images(root / "a", 0)
    _write_images(root / "b", 1)
    lines = [json.dumps({"image": f"a/{n}", "text": "x"}) for n in names]
    lines.insert(3, json.dumps({"text": "a caption without an image"}))
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_feature_extractor_output_shapes(model, image_sets):
    images = np.stack([np.asarray(Image.open(image_sets / "a" / f"{i}.png"))
                       for i in range(N_IMAGES)])  # the command's batch shape: compiled once
    feats, logits = extract(model, jnp.asarray(images))
    assert feats.shape == (N_IMAGES, FEATURE_DIM) and logits.shape == (N_IMAGES, NUM_CLASSES)
    assert feats.dtype == jnp.float32 and bool(jnp.isfinite(feats).all())
    assert float(feats.std(axis=0).mean()) > 0  # different images, different features
    np.testing.assert_allclose(np.asarray(logits), np.asarray(feats) @
                               np.asarray(model.fc.kernel[...]), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_identical_sets_give_fid_zero_and_different_sets_do_not(image_sets, tmp_path, capsys):
    a, b = str(image_sets / "a"), str(image_sets / "b")
    out = tmp_path / "report.json"
    rc = main(["eval-images", "--images", a, "--ref", str(image_sets / "a.jsonl"),
               "--random-weights", "--batch", str(N_IMAGES), "--splits", "2",
               "--out", str(out), "--save-stats", str(tmp_path / "a.npz"),
               "--save-ref-stats", str(tmp_path / "a_manifest.npz")])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "NOT comparable to published ones" in printed.err + printed.out
    assert "FID " in printed.out and "IS  " in printed.out
    report = json.loads(out.read_text())
    assert report["random_weights"] and report["count"] == report["ref_count"] == N_IMAGES
    mu, sigma, count = F.load_stats(str(tmp_path / "a.npz"), FEATURE_DIM)
    scale = np.trace(sigma)
    assert scale > 0 and count == N_IMAGES
    assert abs(report["fid"]) < 1e-3 * scale  # same images (folder vs manifest): FID ≈ 0
    ref_mu, ref_sigma, _ = F.load_stats(str(tmp_path / "a_manifest.npz"), FEATURE_DIM)
    np.testing.assert_allclose(ref_mu, mu, rtol=1e-5, atol=1e-6 * np.abs(mu).max())

    rc = main(["eval-images", "--images", b, "--ref", str(tmp_path / "a.npz"),
               "--random-weights", "--batch", str(N_IMAGES), "--splits", "2",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    other = json.loads(out.read_text())
    assert other["fid"] > 0.05 * scale  # other images: clearly not 0
    assert other["ref_count"] == N_IMAGES and other["inception_score"]["splits"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--batch", "0"], "--batch must be positive, got 0"),
    (["--splits", "9"], "--images: the Inception Score over 9 splits needs at least 9 images"),
    (["--weights", "absent.npz"], "--weights: no such file: absent.npz"),
    (["--random-weights", "--ref", "absent.npz"], "--ref: no such file: absent.npz"),
    (["--random-weights", "--ref", "{a}.jsonl", "--out", "{a}"], "--out {a} is a directory"),
    (["--random-weights", "--ref", "{stats}", "--save-ref-stats", "x.npz"],
     "--save-ref-stats needs a --ref of images"),
    (["--random-weights", "--images", "nowhere/"], "--images nowhere/: no such folder"),
    (["--weights", "{junk}", "--splits", "2"], "junk.npz is not a readable .npz file"),
])
def test_bad_arguments_are_one_line_errors(extra, message, image_sets, tmp_path, capsys,
                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    write_npz(str(tmp_path / "stats.npz"), {"mu": np.zeros(2), "sigma": np.eye(2)})
    fill = {"a": str(image_sets / "a"), "stats": "stats.npz", "junk": "junk.npz"}
    extra = [e.format(**fill) for e in extra]
    args = ["eval-images", "--images", fill["a"], *extra]
    if "--weights" not in extra and "--random-weights" not in extra:
        args.append("--random-weights")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlm: error: ")
    assert message.format(**fill) in err


def test_weights_flags_are_exclusive_and_one_is_required(capsys):
    for flags in ([], ["--weights", "w.npz", "--random-weights"]):
        with pytest.raises(SystemExit) as exc:
            main(["eval-images", "--images", "x", *flags])
        assert exc.value.code == 2
    capsys.readouterr()


# ------------------------------------------------------------- against pytorch-fid itself
def test_matches_pytorch_fids_own_network_with_the_same_weights(tmp_path, monkeypatch):
    """pytorch-fid's network (its own ``fid_inception_v3`` assembly and ``InceptionV3`` resize +
    scaling), randomly initialised, saved as a ``.pth``, converted by ``python -m
    latentlm_jax.image_metrics.convert`` and run here on the same images. Skipped unless PyTorch,
    torchvision and pytorch-fid are importable (not in CI; the command: docs/fid.md)."""
    torch = pytest.importorskip("torch")
    pfi = pytest.importorskip("pytorch_fid.inception")
    from latentlm_jax.image_metrics import convert

    torch.manual_seed(0)
    with monkeypatch.context() as m:  # the assembly without its download of the real weights
        m.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        net = pfi.fid_inception_v3()
    with torch.no_grad():  # weights whose activations neither vanish nor explode
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
        net.fc.weight.normal_(0, 0.02)
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net.eval())
    reference = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    torch.save(net.state_dict(), tmp_path / "net.pth")
    assert convert.main([str(tmp_path / "net.pth"), str(tmp_path / "net.npz")]) == 0
    model = abstract_model()
    load_weights(model, str(tmp_path / "net.npz"))

    rng = np.random.default_rng(0)
    for shape in ((2, 64, 80, 3), (1, 512, 384, 3)):  # upsampled and downsampled to 299²
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            want = reference(x)[0].flatten(1)
            want_logits = (want @ net.fc.weight.T).numpy()
        feats, logits = extract(model, jnp.asarray(images))
        want = want.numpy()
        assert np.abs(np.asarray(feats) - want).max() < 1e-5 * np.abs(want).max()
        assert np.abs(np.asarray(logits) - want_logits).max() < 1e-5 * np.abs(want_logits).max()
