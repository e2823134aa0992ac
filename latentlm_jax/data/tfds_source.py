"""A prepared TFDS dataset (ArrayRecord files) as a random-access source, without TensorFlow.

``tfds.data_source`` reads the ArrayRecord shards of a dataset prepared with
``file_format="array_record"``. Its features are mapped onto our keys with ``feature_map``
(``config.data.tfds_feature_map``), e.g. ``{"text": "caption", "image": "pixels"}``; nested features
are named with ``/`` (``"meta/caption"``). Values are converted like manifest files:

- text: ``Text`` (bytes, decoded as UTF-8), a string, or a ``ClassLabel`` (its label name);
- image: a ``uint8`` array ``[H, W]`` / ``[H, W, 1-4]`` (store images as ``Tensor`` features:
  encoding ``tfds.features.Image`` needs TensorFlow) or encoded image bytes;
- audio: float or integer PCM ``[T]`` / ``[T, C]``; its rate is the ``Audio`` feature's
  ``sample_rate``, else ``source_sample_rate``, else assumed to be ``sample_rate`` already.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from latentlm_jax.data.bad_input import BadInput
from latentlm_jax.data.indexing import check_index
from latentlm_jax.data.manifest import KEYS, check_text, read_label
from latentlm_jax.data.media import (
    DEFAULT_IMAGE_CROP,
    DEFAULT_MAX_IMAGE_PIXELS,
    decode_image_bytes,
    prepare_audio_array,
    prepare_image_array,
)


class TfdsSource:
    """``source[i]`` -> ``{"text", "image", "audio", "source": "tfds:<name>/<split>:<i>"}``; keys
    not in ``feature_map`` are ``None``."""

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None,
        feature_map: Mapping[str, str] | str | Sequence[tuple[str, str]],
        *,
        image_resolution: int | None = None,
        sample_rate: int | None = None,
        num_samples: int = 0,
        source_sample_rate: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        only: str | None = None,
        label: str = "",
        image_crop: str = DEFAULT_IMAGE_CROP,
    ):
        self.name, self.split = name, split
        # data.label: the feature holding the class label (a ClassLabel or an int), read into
        # the examples' "label" (class-conditional generation, docs/class_conditional.md)
        self.label = label
        self.feature_map = parse_feature_map(feature_map)
        if only is not None:  # a reader that needs one field (a σ-VAE) reads nothing else
            if only not in self.feature_map:
                raise ValueError(f"the tfds feature map {feature_map!r} maps no {only!r}: "
                                 f"name the feature that holds it ({only}=<feature>)")
            self.feature_map = {only: self.feature_map[only]}
        self.max_image_pixels = max_image_pixels
        self.image_resolution = image_resolution
        self.image_crop = image_crop  # data.image_crop (data/media.py IMAGE_CROPS)
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        # download=False: never fetch or prepare at training time (no network); prepare beforehand.
        self._ds = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        features = self._ds.dataset_info.features
        self._features = {k: _lookup(features, p, name) for k, p in self.feature_map.items()}
        if label:
            _lookup(features, label, name)  # a missing feature fails here, naming it
        audio_feature = self._features.get("audio")
        self.source_sample_rate = getattr(audio_feature, "sample_rate", None) or source_sample_rate
        if "audio" in self.feature_map and not (sample_rate or self.source_sample_rate):
            raise ValueError("TfdsSource needs sample_rate (or source_sample_rate) to read audio")

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(index, len(self))
        where = f"tfds:{self.name}/{self.split}:{i}"
        try:
            example = self._convert(self._read(i))
        except BadInput as exc:
            exc.where = where
            raise
        example["source"] = where
        return example

    def _read(self, i: int) -> Any:
        try:
            return self._ds[i]
        except Exception as exc:  # undecodable record bytes
            raise BadInput("corrupt_record", f"cannot read record: {exc}") from exc

    def _convert(self, record: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"text": None, "image": None, "audio": None}
        for key, path in self.feature_map.items():
            value = record
            for part in path.split("/"):
                value = value[part]
            out[key] = getattr(self, f"_{key}")(value)
        if self.label:
            value = record
            for part in self.label.split("/"):
                value = value[part]
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            out["label"] = read_label({"label": value}, "label")
        return out

    def _text(self, value: Any) -> str:
        feature = self._features["text"]
        if isinstance(feature, tfds.features.ClassLabel):
            return feature.int2str(int(value))
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        return check_text(value)

    def _image(self, value: Any) -> np.ndarray:
        if isinstance(value, bytes | np.bytes_):
            return decode_image_bytes(bytes(value), self.image_resolution,
                                      max_pixels=self.max_image_pixels, crop=self.image_crop)
        return prepare_image_array(np.asarray(value), self.image_resolution, self.max_image_pixels,
                                   self.image_crop)

    def _audio(self, value: Any) -> np.ndarray:
        target = self.sample_rate or self.source_sample_rate
        a = np.asarray(value)
        full_scale = None
        if np.issubdtype(a.dtype, np.integer) and isinstance(
            self._features["audio"], tfds.features.Audio
        ):
            full_scale = 32768.0  # TFDS Audio keeps 16-bit PCM values in a wider integer dtype
        rate = self.source_sample_rate or target
        return prepare_audio_array(a, rate, target, self.num_samples, int_full_scale=full_scale)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} examples)"


def parse_feature_map(
    value: Mapping[str, str] | str | Sequence[tuple[str, str]],
) -> dict[str, str]:
    """``{"text": "caption"}``, ``"text=caption,image=pixels"`` (the config form) or pairs ->
    ``{our key: dataset feature path}``, checked against ``("text", "image", "audio")``."""
    if isinstance(value, str):
        pairs = []
        for item in filter(None, (x.strip() for x in value.split(","))):
            ours, sep, theirs = item.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise ValueError(f"tfds feature_map entry {item!r} is not 'ours=feature'")
            pairs.append((ours.strip(), theirs.strip()))
    elif isinstance(value, Mapping) or hasattr(value, "items"):
        pairs = list(value.items())
    else:
        pairs = [tuple(p) for p in value]
    mapping = {str(k): str(v) for k, v in pairs}
    if not mapping or set(mapping) - set(KEYS):
        raise ValueError(
            f"tfds feature_map keys must be a non-empty subset of {KEYS}, got {sorted(mapping)}"
        )
    return mapping


def _lookup(features: Any, path: str, name: str) -> Any:
    node = features
    for part in path.split("/"):
        try:
            node = node[part]
        except (KeyError, TypeError):
            available = list(getattr(features, "keys", lambda: [])())
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {path!r} (top-level features: {available})"
            ) from None
    return node
