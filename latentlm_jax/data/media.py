"""Decode user images and audio into the fixed shapes the model trains on.

Images become ``uint8[res, res, 3]``: transparency is composited on white; grayscale, palette,
CMYK and 16-bit images become RGB; the short side is scaled to ``res`` and the centre square is
kept, as ``data.image_crop`` says (:data:`IMAGE_CROPS`, below). Audio becomes
``float32[num_samples]``: mono (channel mean), band-limited resampling to the target rate
(polyphase, the exact rational ratio), then zero-padded or cut. Undecodable inputs raise
:class:`~latentlm_jax.data.bad_input.BadInput`, never a decoder-specific exception.

An image with more than ``max_pixels`` pixels (``data.max_image_pixels``) is refused as
``too_large`` from its header, before any pixel is decoded: a 33 KB PNG can declare 12000×12000
pixels and take 1.7 GB and seconds to decode. Pillow's own ``DecompressionBombWarning`` is
silenced (this check replaces it); its ``DecompressionBombError`` is reported as ``too_large``.
Likewise a clip whose header's sample rate would need an unbounded resampling filter (a prime
rate near 10^6 Hz takes seconds, 2 GHz hundreds of GB) is ``corrupt_audio`` before it is read
(:data:`MAX_RESAMPLE_FACTOR`).
"""

from __future__ import annotations

import io
import math
import struct
import warnings

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError

from latentlm_jax import paths
from latentlm_jax.data.bad_input import BadInput

# The default of data.max_image_pixels (2^27 ≈ 134 MP): above any camera's photo (100-MP medium
# format included), below Pillow's decompression-bomb error (2 × Image.MAX_IMAGE_PIXELS ≈ 179 MP).
DEFAULT_MAX_IMAGE_PIXELS = 2**27

# data.image_crop: how an image becomes res × res. "bicubic_square": one bicubic resampling of the
# centred square (:func:`_square`). "adm": the ADM centre crop LatentLM's authors train on (their
# ``center_crop_arr``, from guided-diffusion): halve with a box filter while the short side is
# ≥ 2·res, scale the short side to res (bicubic, sizes rounded), crop the centre (:func:`adm_crop`).
IMAGE_CROPS = ("bicubic_square", "adm")
DEFAULT_IMAGE_CROP = "bicubic_square"

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _require_file(path: str) -> None:
    if not paths.is_file(path):
        raise BadInput("missing_file", "no such file", file=path)


# ---------------------------------------------------------------------------------------- images


def load_image(path: str, resolution: int | None,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               crop: str = DEFAULT_IMAGE_CROP) -> np.ndarray:
    """Read any image Pillow reads as ``uint8[resolution, resolution, 3]``."""
    _require_file(path)
    data = paths.read_bytes(path)
    return decode_image_bytes(data, resolution, file=path, max_pixels=max_pixels, crop=crop)


def check_pixels(width: int, height: int, max_pixels: int, file: str | None = None) -> None:
    """``BadInput("too_large")`` when ``width × height`` exceeds ``max_pixels``."""
    if width * height > max_pixels:
        raise BadInput("too_large", f"{width}×{height} = {width * height:,} pixels, over "
                                    f"data.max_image_pixels={max_pixels:,}", file=file)


def _ignore_pillow_bomb_warning() -> None:
    """Installs (once per filter list: a ``warnings.catch_warnings`` block starts a new one) an
    ignore filter for Pillow's ``DecompressionBombWarning``, which :func:`check_pixels` replaces.
    Checked at each decode rather than set at import, so it holds in whatever filter list is
    current."""
    for action, _, category, _, _ in warnings.filters:
        if category is Image.DecompressionBombWarning and action == "ignore":
            return
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_image_bytes(
    data: bytes, resolution: int | None, *, file: str | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, crop: str = DEFAULT_IMAGE_CROP,
) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP, ...) -> ``uint8[res, res, 3]`` (or ``[H, W, 3]`` if
    ``resolution`` is None). Images over ``max_pixels`` are refused before decoding."""
    check_crop(crop)
    _ignore_pillow_bomb_warning()
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise BadInput("too_large", f"over data.max_image_pixels={max_pixels:,}: {exc}",
                       file=file) from exc
    except UnidentifiedImageError as exc:
        raise BadInput("corrupt_image", "not an image format Pillow reads", file=file) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad input
        raise BadInput("corrupt_image", f"cannot decode image: {exc}", file=file) from exc
    check_pixels(*img.size, max_pixels, file)
    try:
        if resolution and img.format == "JPEG" and crop != "adm":
            # Let libjpeg decode at a reduced scale, keeping >= 2x the target on the short side
            # (not for "adm": the authors decode every pixel, then box-halve).
            w, h = img.size
            scale = 2 * resolution / min(w, h)
            if scale < 1:
                img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad input
        raise BadInput("corrupt_image", f"cannot decode image: {exc}", file=file) from exc
    return resize_image(rgb, resolution, crop)


def prepare_image_array(array: np.ndarray, resolution: int | None,
                        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                        crop: str = DEFAULT_IMAGE_CROP) -> np.ndarray:
    """A decoded ``uint8`` image ``[H, W]``, ``[H, W, 1|2|3|4]`` -> ``uint8[res, res, 3]``."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise BadInput("bad_field", f"image array must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    ok = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (2, 3, 4))
    if not ok or a.shape[0] == 0 or a.shape[1] == 0:
        raise BadInput("bad_field", f"image array must be [H, W] or [H, W, 1-4], got {a.shape}")
    check_pixels(a.shape[1], a.shape[0], max_pixels)
    img = Image.fromarray(np.ascontiguousarray(a))  # L, LA, RGB or RGBA from the shape
    return resize_image(_to_rgb(img), resolution, crop)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> ``uint8[H, W, 3]``; transparency composited on white."""
    if img.mode in _SIXTEEN_BIT_MODES:  # 16-bit grayscale: Pillow's convert("L") would clip
        a = np.asarray(img).astype(np.float64)
        if a.size and a.max() > 255:
            a = a / 257.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        gray = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def check_crop(crop: str) -> None:
    if crop not in IMAGE_CROPS:
        raise ValueError(f"image crop must be one of {', '.join(IMAGE_CROPS)}; got {crop!r}")


def resize_image(rgb: np.ndarray, resolution: int | None,
                 crop: str = DEFAULT_IMAGE_CROP) -> np.ndarray:
    """``uint8[H, W, 3]`` -> ``uint8[res, res, 3]`` by ``crop`` (:data:`IMAGE_CROPS`); ``[H, W, 3]``
    unchanged when ``resolution`` is None."""
    check_crop(crop)
    if crop == "adm" and resolution:
        return adm_crop(rgb, resolution)
    return _square(rgb, resolution)


def adm_crop(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """The ADM centre crop, pixel for pixel as LatentLM's ``center_crop_arr`` (microsoft/unilm
    ``LatentLM/utils.py``; from guided-diffusion): while the short side is ≥ 2·res, halve both
    sides (floor) with a box filter; then resize bicubically to ``round(side · res / short)``
    (Python's round); keep the ``res × res`` block at offsets ``(side - res) // 2``."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    while min(img.size) >= 2 * resolution:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.Resampling.BOX)
    scale = resolution / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)),
                     Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top:top + resolution, left:left + resolution])


def _square(rgb: np.ndarray, resolution: int | None) -> np.ndarray:
    """Scale the short side to ``resolution`` and keep the centre square.

    Done as one resampling of the centred ``s x s`` box (s = short side) to ``res x res``: the
    same geometry as "resize short side, then centre-crop" without rounding the intermediate size.
    """
    if not resolution:
        return np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    if h == w == resolution:
        return np.ascontiguousarray(rgb)
    s = min(h, w)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    out = Image.fromarray(rgb).resize(
        (resolution, resolution), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0
    )
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------------------- audio


def load_audio(path: str, sample_rate: int, num_samples: int) -> np.ndarray:
    """Read WAV/FLAC/OGG/MP3 (anything libsndfile reads) as mono ``float32[num_samples]`` at
    ``sample_rate``; the clip starts at the beginning of the file."""
    _require_file(path)
    if path.lower().endswith((".wav", ".wave")):
        _check_wav_chunks(path)
    try:
        with paths.open_file(path, "rb") as stream, sf.SoundFile(stream) as f:
            rate, declared = int(f.samplerate), int(f.frames)
            check_resampling(rate, sample_rate, file=path)  # before reading: bounds `wanted`
            wanted = declared
            if num_samples > 0:
                wanted = min(declared, _input_frames_needed(num_samples, rate, sample_rate))
            data = f.read(frames=wanted, dtype="float32", always_2d=True)
    except BadInput:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad input
        raise BadInput("corrupt_audio", f"cannot decode audio: {exc}", file=path) from exc
    if declared <= 0 or data.shape[0] == 0:
        raise BadInput("empty_audio", "audio has no samples", file=path)
    if data.shape[0] < wanted:
        raise BadInput(
            "corrupt_audio", f"truncated: read {data.shape[0]} of {wanted} frames", file=path
        )
    if not np.isfinite(data).all():
        raise BadInput("corrupt_audio", "non-finite samples", file=path)
    return prepare_audio_array(data, rate, sample_rate, num_samples)


def prepare_audio_array(
    audio: np.ndarray,
    source_rate: int,
    sample_rate: int,
    num_samples: int,
    *,
    int_full_scale: float | None = None,
) -> np.ndarray:
    """Samples ``[T]`` or ``[T, channels]`` (float, or integer PCM) -> mono ``float32[num_samples]``
    at ``sample_rate``. ``num_samples <= 0`` keeps the whole (resampled) clip. Integer samples are
    divided by ``int_full_scale`` (default: the dtype's, e.g. 32768 for int16)."""
    a = np.asarray(audio)
    if np.issubdtype(a.dtype, np.integer):
        scale = int_full_scale or float(-np.iinfo(a.dtype).min)
        a = a.astype(np.float32) / np.float32(scale)
    elif not np.issubdtype(a.dtype, np.floating):
        raise BadInput("bad_field", f"audio must be a float or integer array, got {a.dtype}")
    if a.ndim == 2:
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise BadInput("bad_field", f"audio must be [T] or [T, channels], got {a.shape}")
    if a.shape[0] == 0:
        raise BadInput("empty_audio", "audio has no samples")
    if not np.isfinite(a).all():
        raise BadInput("corrupt_audio", "non-finite samples")
    check_resampling(source_rate, sample_rate)
    a = resample(a.astype(np.float32), source_rate, sample_rate)
    return fit_length(a, num_samples) if num_samples > 0 else a


# The largest factor (max(up, down) of the reduced ratio target/source) a clip may be resampled
# by. resample_poly's filter has 20·max(up, down) + 1 taps, so a header's absurd sample rate would
# take seconds (a prime near 10^6 Hz) or hundreds of GB (2 GHz); real rates need a few thousand
# at most (44056 Hz → 16 kHz: 5507). At the limit, a clip takes about half a second.
MAX_RESAMPLE_FACTOR = 2**16


def check_resampling(source_rate: int, target_rate: int, file: str | None = None) -> None:
    """``BadInput("corrupt_audio")`` for a sample rate that cannot be resampled to
    ``target_rate`` at a bounded cost (above)."""
    if source_rate <= 0:
        raise BadInput("corrupt_audio", f"sample rate {source_rate} Hz", file=file)
    g = math.gcd(int(source_rate), int(target_rate))
    factor = max(int(source_rate), int(target_rate)) // g
    if factor > MAX_RESAMPLE_FACTOR:
        raise BadInput("corrupt_audio", f"sample rate {source_rate:,} Hz cannot be resampled to "
                                        f"{target_rate:,} Hz at a bounded cost (ratio "
                                        f"{target_rate // g}/{source_rate // g}; each side at "
                                        f"most {MAX_RESAMPLE_FACTOR:,})", file=file)


def resample(x: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling by the exact ratio ``target/source`` (Kaiser-windowed
    FIR low-pass at the lower Nyquist). Output length ``ceil(len(x) * target / source)``."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    if source_rate == target_rate:
        return np.asarray(x, dtype=np.float32)
    # scipy.signal costs ~1 s to import: only runs that resample audio pay it
    from scipy.signal import resample_poly

    g = math.gcd(int(source_rate), int(target_rate))
    up, down = int(target_rate) // g, int(source_rate) // g
    return resample_poly(np.asarray(x, np.float64), up, down).astype(np.float32)


def fit_length(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut to, or zero-pad up to, ``num_samples``."""
    out = np.zeros(num_samples, np.float32)
    n = min(num_samples, x.shape[0])
    out[:n] = x[:n]
    return out


def _input_frames_needed(num_samples: int, source_rate: int, target_rate: int) -> int:
    """Source frames that determine the first ``num_samples`` output samples (plus the FIR tail)."""
    if source_rate == target_rate:
        return num_samples
    g = math.gcd(source_rate, target_rate)
    up, down = target_rate // g, source_rate // g
    # resample_poly's filter has 10 * max(up, down) taps on each side at the upsampled rate.
    margin = 10 * max(up, down) // up + 16
    return math.ceil(num_samples * source_rate / target_rate) + margin


def _check_wav_chunks(path: str) -> None:
    """libsndfile silently reads a truncated WAV: compare the data chunk's size to the file's."""
    with paths.open_file(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # not plain RIFF/WAVE (RF64, W64, ...): leave it to libsndfile
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                available = size - pos - 8
                streaming = chunk_size in (0, 0xFFFFFFFF)  # writers that never patched the size
                if not streaming and chunk_size > available:
                    raise BadInput(
                        "corrupt_audio",
                        f"truncated WAV: data chunk of {chunk_size} bytes, {available} present",
                        file=path,
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)
