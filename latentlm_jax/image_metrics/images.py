"""An image set for FID: every image file under a folder, the ``"image"`` of each line of a JSONL
manifest (``latentlm generate`` writes ``DIR/manifest.jsonl``; relative paths are against the
manifest's folder), or the float images of a ``.npy`` ``[N, H, W, 3]`` in [0, 1] (``generate``'s
``DIR/images.npy``; :mod:`latentlm_jax.image_metrics.float_images`). Image files are read through
the path layer by ``data/media.py``'s loader at their own size, as RGB (transparency composited on
white); a file that does not decode is a one-line error naming it, never a silent skip — FID
depends on which images are in the set.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.data.bad_input import NotApplicable
from latentlm_jax.data.manifest import ManifestSource
from latentlm_jax.data.media import load_image
from latentlm_jax.image_metrics.float_images import FloatImageFile

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageSet:
    """The images of a folder (sorted paths), a manifest (file order) or a ``.npy`` of floats
    (row order), read lazily."""

    def __init__(self, spec: str, flag: str):
        self.spec = spec
        self._files: list[str] | None = None
        self._manifest: ManifestSource | None = None
        self._floats: FloatImageFile | None = None
        if spec.lower().endswith(".npy"):
            self._floats = FloatImageFile(spec, flag)  # its header checked here
        elif paths.is_dir(spec):
            self._files = [f for f in paths.find_files(spec)
                           if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not self._files:
                raise ConfigError("", f"{flag} {spec}: no image files "
                                      f"({', '.join(IMAGE_EXTENSIONS)}) under this folder")
        elif paths.is_file(spec):
            self._manifest = ManifestSource(spec, image_resolution=None, sample_rate=16000,
                                            num_samples=0, only="image")
            if len(self._manifest) == 0:
                raise ConfigError("", f"{flag} {spec}: the manifest has no lines")
        else:
            raise ConfigError("", f"{flag} {spec}: no such folder or manifest")

    @property
    def exact_count(self) -> bool:
        """A folder's or a ``.npy``'s length is its image count; a manifest's only bounds it."""
        return self._manifest is None

    def __len__(self) -> int:
        """Image files of a folder; lines of a manifest (those without an image are skipped);
        images of a ``.npy``."""
        if self._floats is not None:
            return len(self._floats)
        return len(self._files) if self._files is not None else len(self._manifest)

    def __iter__(self) -> Iterator[np.ndarray]:
        """uint8 ``[H, W, 3]`` per image file; float32 ``[H, W, 3]`` in [0, 1] per ``.npy`` row."""
        if self._floats is not None:
            yield from self._floats
            return
        if self._files is not None:
            for f in self._files:
                yield load_image(f, None)
            return
        for i in range(len(self._manifest)):
            try:
                yield self._manifest[i]["image"]
            except NotApplicable:  # a line without "image" (a caption of a mixed manifest)
                continue


def batches(images: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """``[b, H, W, 3]`` batches (uint8, or float32 from a ``.npy``) of at most ``size`` images; a
    batch ends early where the image size changes (sets of one size, the usual case, give full
    batches)."""
    pending: list[np.ndarray] = []
    for image in images:
        if pending and (len(pending) == size or image.shape != pending[0].shape):
            yield np.stack(pending)
            pending = []
        pending.append(image)
    if pending:
        yield np.stack(pending)
