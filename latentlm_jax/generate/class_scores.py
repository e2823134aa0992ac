"""Scores of class-conditional samples of the built-in data (docs/class_conditional.md).

    latentlm generate --workdir W --class-id all --num-samples 2 --out S
    python -m latentlm_jax.generate.class_scores S

Each PNG that ``latentlm generate --class-id`` listed in ``S/manifest.jsonl`` (with its ``label``)
is scored by the built-in image scorer (:func:`latentlm_jax.data.scoring.score_image`) against the
attributes of its class (:func:`latentlm_jax.data.shapes_tones.class_attributes`): the class
accuracy (all four attributes right) and each attribute's, over all samples, and the class
accuracy over the classes seen in training and over the 18 held-out combinations' classes.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np

from latentlm_jax import paths
from latentlm_jax.data.scoring import ATTRIBUTES, score_image
from latentlm_jax.data.shapes_tones import class_attributes, is_held_out
from latentlm_jax.generate.bulk import MANIFEST


def score_class_samples(out_dir: str) -> dict[str, float | int]:
    """Accuracies of the samples in ``out_dir`` (see the module docstring)."""
    from PIL import Image

    rows = []
    for line in paths.read_text(paths.join(out_dir, MANIFEST)).splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if "label" not in entry or "image" not in entry:
            raise ValueError(f"{MANIFEST} line without label and image (not --class-id "
                             f"samples): {line[:80]}")
        img = np.asarray(Image.open(io.BytesIO(
            paths.read_bytes(paths.join(out_dir, entry["image"])))).convert("RGB"))
        attrs = class_attributes(entry["label"])
        rows.append((score_image(img, attrs), is_held_out(attrs)))
    if not rows:
        raise ValueError(f"no samples in {paths.join(out_dir, MANIFEST)}")
    out: dict[str, float | int] = {"samples": len(rows),
                                   "class": float(np.mean([s["correct"] for s, _ in rows]))}
    for a in ATTRIBUTES:
        out[a] = float(np.mean([s[a] for s, _ in rows]))
    # The 18 held-out combinations never occur in the train split, so their classes' embeddings
    # are never trained: a class-conditional model cannot compose them (captions can).
    for name, held in (("seen", False), ("held_out", True)):
        flags = [s["correct"] for s, h in rows if h == held]
        if flags:
            out[f"{name}_samples"] = len(flags)
            out[f"class_{name}"] = float(np.mean(flags))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the --out folder of `latentlm generate --class-id`")
    scores = score_class_samples(parser.parse_args(argv).out_dir)
    for key, value in scores.items():
        print(f"{key:18s} {value:.1%}" if isinstance(value, float) else f"{key:18s} {value}")


if __name__ == "__main__":
    main()
