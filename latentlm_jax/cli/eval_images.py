"""``latentlm eval-images``: FID and Inception Score of an image set (``docs/fid.md``).

    latentlm eval-images --images samples/ --ref ref_stats.npz --weights inception_fid.npz
    latentlm eval-images --images samples/manifest.jsonl --ref real_images/ --weights W.npz \\
        --save-ref-stats real_stats.npz --out report.json

``--images`` and a ``--ref`` that is not an ``.npz`` are a folder (every image file under it), a
JSONL manifest (its ``"image"`` paths) or a ``.npy`` of float images ``[N, H, W, 3]`` in [0, 1]
(``latentlm generate``'s ``images.npy``: the decoded images unquantised, as LatentLM's authors
score them; values clamped to [0, 1]). ``--ref`` may be left out for the Inception Score alone;
``--save-stats`` keeps the ``--images`` set's statistics as a future ``--ref``. ``--weights`` is
the converted FID Inception (``python -m latentlm_jax.image_metrics.convert``);
``--random-weights`` runs a randomly initialised one instead, for tests and dry runs only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError

RANDOM_WARNING = ("WARNING: --random-weights: a randomly initialised Inception network; these "
                  "FID / IS figures are NOT comparable to published ones (tests and dry runs "
                  "only)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True,
                        help="the images to score: a folder, a JSONL manifest, or a .npy of "
                             "float images [N, H, W, 3] in [0, 1] (generate's images.npy)")
    parser.add_argument("--ref", default=None,
                        help="reference: a folder, a JSONL manifest, a .npy of float images, or "
                             "statistics (.npz with mu and sigma); without it only the "
                             "Inception Score is computed")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="the converted FID Inception weights (.npz)")
    weights.add_argument("--random-weights", action="store_true",
                         help="a randomly initialised network (tests, dry runs): figures "
                              "comparable to nothing")
    parser.add_argument("--batch", type=int, default=50, help="images per batch (default 50)")
    parser.add_argument("--splits", type=int, default=10,
                        help="Inception Score splits (default 10, as published)")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    parser.add_argument("--save-stats", default=None,
                        help="save the --images set's statistics (.npz) for use as a --ref")
    parser.add_argument("--save-ref-stats", default=None,
                        help="save the --ref set's statistics (.npz) for later runs")


def _check_output(path: str | None, flag: str) -> None:
    from latentlm_jax import paths

    if path is not None and paths.is_dir(path):
        raise ConfigError("", f"{flag} {path} is a directory, not a file")


def _check_args(args: argparse.Namespace) -> bool:
    """Every argument checked before any image is read; returns whether ``--ref`` is statistics."""
    from latentlm_jax import paths

    if args.batch <= 0:
        raise ConfigError("", f"--batch must be positive, got {args.batch}")
    if args.splits <= 0:
        raise ConfigError("", f"--splits must be positive, got {args.splits}")
    if args.weights is not None and not paths.is_file(args.weights):
        raise ConfigError("", f"--weights: no such file: {args.weights}")
    ref_is_stats = args.ref is not None and args.ref.lower().endswith(".npz")
    if ref_is_stats and not paths.is_file(args.ref):
        raise ConfigError("", f"--ref: no such file: {args.ref}")
    if args.save_ref_stats is not None and (args.ref is None or ref_is_stats):
        raise ConfigError("", "--save-ref-stats needs a --ref of images (a folder or manifest)")
    for flag in ("out", "save_stats", "save_ref_stats"):
        _check_output(getattr(args, flag), "--" + flag.replace("_", "-"))
    return ref_is_stats


def _features(model, image_set, batch: int, label: str):
    """Runs the network over ``image_set``, printing progress about every 10 seconds."""
    from latentlm_jax.image_metrics.features import set_features

    start = last = time.monotonic()

    def progress(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 10:
            last = now
            print(f"  {label}: {done} images ({done / (now - start):.1f}/s)", flush=True)

    stats, logits = set_features(model, image_set, batch, progress)
    print(f"{label}: {stats.count} images in {time.monotonic() - start:.1f}s", flush=True)
    return stats, logits


def _need(count: int, least: int, flag: str, why: str) -> None:
    if count < least:
        raise ConfigError("", f"{flag}: {why} needs at least {least} images, got {count}")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    ref_is_stats = _check_args(args)
    from latentlm_jax import paths
    from latentlm_jax.image_metrics import fid as F
    from latentlm_jax.image_metrics.images import ImageSet
    from latentlm_jax.image_metrics.inception import FEATURE_DIM
    from latentlm_jax.image_metrics.weights import abstract_model, load_weights, random_model

    images = ImageSet(args.images, "--images")
    ref_set = ImageSet(args.ref, "--ref") if args.ref is not None and not ref_is_stats else None
    ref_stats = F.load_stats(args.ref, FEATURE_DIM) if ref_is_stats else None
    if images.exact_count:  # known before any image is decoded
        _need(len(images), args.splits, "--images",
              f"the Inception Score over {args.splits} splits")

    if args.random_weights:
        print(RANDOM_WARNING, file=sys.stderr, flush=True)
        model = random_model(0)
    else:
        model = abstract_model()
        load_weights(model, args.weights)

    stats, logits = _features(model, images, args.batch, "--images")
    _need(stats.count, args.splits, "--images", f"the Inception Score over {args.splits} splits")
    is_mean, is_std = F.inception_score(logits, args.splits)
    report = {"images": args.images, "count": stats.count,
              "inception_score": {"mean": is_mean, "std": is_std, "splits": args.splits},
              "weights": "random" if args.random_weights else args.weights,
              "random_weights": bool(args.random_weights)}
    if args.save_stats is not None:
        _need(stats.count, 2, "--images", "a covariance")
        F.save_stats(args.save_stats, stats)
    if args.ref is not None:
        _need(stats.count, 2, "--images", "FID")
        if ref_set is not None:
            rstats, _ = _features(model, ref_set, args.batch, "--ref")
            _need(rstats.count, 2, "--ref", "FID")
            mu2, sigma2, ref_count = rstats.mean, rstats.covariance, rstats.count
            if args.save_ref_stats is not None:
                F.save_stats(args.save_ref_stats, rstats)
        else:
            mu2, sigma2, ref_count = ref_stats
        report["fid"] = F.frechet_distance(stats.mean, stats.covariance, mu2, sigma2)
        report["ref"], report["ref_count"] = args.ref, ref_count

    tag = "  [random weights: not comparable]" if args.random_weights else ""
    if "fid" in report:
        ref_n = "?" if report["ref_count"] is None else report["ref_count"]
        print(f"FID {report['fid']:.4f}  ({stats.count} images vs {ref_n} reference images){tag}")
    print(f"IS  {is_mean:.4f} ± {is_std:.4f}  ({args.splits} splits of {stats.count} images){tag}")
    small = min(stats.count, report.get("ref_count") or stats.count)
    if "fid" in report and small < FEATURE_DIM:
        print(f"note: {small} images < {FEATURE_DIM} feature dimensions: the covariance is "
              "rank-deficient and FID is biased upward (published FIDs use 50,000 images)")
    if args.random_weights:
        print(RANDOM_WARNING)
    if args.out is not None:
        paths.write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
