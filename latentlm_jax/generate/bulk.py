"""Text → image / audio in bulk: prompt requests → batches → files + ``manifest.jsonl``.

Samples are grouped by (modality, seed) in the order they first appear and cut into batches of
``batch_size`` rows (a group smaller than that is one batch of its own size; the last batch of a
group is padded by repeating its last prompt). Batch ``b`` of a group draws its noise from
``fold_in(fold_in(key(seed), modality id), b)``, so a sample depends only on its group's requests
and ``batch_size``: a line with a seed of its own gives the same files whatever else the file holds.

File ``<index>_<k>.png|wav`` is sample ``k`` of prompt ``index``. ``manifest.jsonl`` has one line
per file — ``{"text": prompt, "image" | "audio": file, ...settings}`` — so it is also a data
manifest: ``data.source=manifest`` reads the generated files back with their prompts as captions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from latentlm_jax import paths
from latentlm_jax.generate.prompts import PromptRequest
from latentlm_jax.modality import MODALITY_IDS

MANIFEST = "manifest.jsonl"
FLOAT_IMAGES = "images.npy"  # the images unquantised (cli/generate.py; image_metrics/float_images)
EXTENSIONS = {"image": "png", "audio": "wav"}


@dataclasses.dataclass(frozen=True)
class Batch:
    """One generator call: ``items`` are (request, sample number); ``rows`` ≥ len(items)."""

    modality: str
    seed: int
    number: int  # within its (modality, seed) group
    rows: int
    items: tuple[tuple[PromptRequest, int], ...]

    def key(self) -> jax.Array:
        root = jax.random.fold_in(jax.random.key(self.seed), MODALITY_IDS[self.modality])
        return jax.random.fold_in(root, self.number)

    def prompts(self) -> list[str]:
        """The batch's prompts, padded to ``rows`` by repeating the last."""
        prompts = [req.prompt for req, _ in self.items]
        return prompts + [prompts[-1]] * (self.rows - len(prompts))


def plan_batches(requests: Sequence[PromptRequest], batch_size: int) -> list[Batch]:
    """Every sample of every request, in batches (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    groups: dict[tuple[str, int], list[tuple[PromptRequest, int]]] = {}
    for req in requests:
        groups.setdefault((req.modality, req.seed), []).extend((req, k) for k in range(req.count))
    batches = []
    for (modality, seed), samples in groups.items():
        rows = min(batch_size, len(samples))
        for number, start in enumerate(range(0, len(samples), rows)):
            batches.append(Batch(modality, seed, number, rows,
                                 tuple(samples[start:start + rows])))
    return batches


def file_name(req: PromptRequest, k: int, num_prompts: int, max_count: int) -> str:
    """``0003_01.png``: prompt index and sample number, zero-padded so names sort."""
    iw, kw = max(4, len(str(num_prompts - 1))), max(2, len(str(max_count - 1)))
    return f"{req.index:0{iw}d}_{k:0{kw}d}.{EXTENSIONS[req.modality]}"


def run_batches(requests: Sequence[PromptRequest], batch_size: int, out_dir: str,
                generate: Callable[[Batch], Sequence[tuple[Any, dict[str, Any]]]],
                save: Callable[[str, str, Any], None], settings: dict[str, Any],
                on_batch: Callable[[int, int, int], None] | None = None) -> list[dict[str, Any]]:
    """Runs every batch. ``generate(batch)`` gives (medium, extra fields) for (at least) each of
    the batch's items; ``save(path, modality, medium)`` writes one file, and its line (request,
    batch, ``settings``, extras) is appended to ``out_dir/manifest.jsonl`` (truncated first) as
    soon as the batch is written. Returns the lines. ``on_batch(done, total, files)`` reports."""
    paths.makedirs(out_dir)
    batches = plan_batches(requests, batch_size)
    num_prompts = len(requests)
    max_count = max(r.count for r in requests)
    lines: list[dict[str, Any]] = []
    # (in a bucket the manifest object appears whole when the last batch is written)
    with paths.open_file(paths.join(out_dir, MANIFEST), "w") as manifest:
        for b, batch in enumerate(batches):
            results = generate(batch)
            for row, (req, k) in enumerate(batch.items):
                medium, extra = results[row]
                name = file_name(req, k, num_prompts, max_count)
                save(str(paths.join(out_dir, name)), req.modality, medium)
                line = {"text": req.prompt, req.modality: name, "prompt_index": req.index,
                        "line": req.line, "sample": k, "modality": req.modality,
                        "seed": req.seed, "batch": batch.number, "row": row,
                        "batch_rows": batch.rows, "batch_size": batch_size, **settings, **extra}
                manifest.write(json.dumps(line, ensure_ascii=False) + "\n")
                lines.append(line)
            manifest.flush()
            if on_batch is not None:
                on_batch(b + 1, len(batches), len(lines))
    return lines


def save_medium(path: str, modality: str, medium: np.ndarray, sample_rate: int) -> None:
    """A uint8 image → PNG; a float wave in [-1, 1] → 16-bit WAV at ``sample_rate``."""
    if modality == "image":
        from PIL import Image

        with paths.open_file(path, "wb") as f:
            Image.fromarray(np.asarray(medium)).save(f, format="PNG")
    else:
        import soundfile

        with paths.open_file(path, "wb") as f:
            soundfile.write(f, np.asarray(medium, np.float32), sample_rate, subtype="PCM_16",
                            format="WAV")
