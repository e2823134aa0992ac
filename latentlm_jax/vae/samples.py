"""Reconstruction quality (PSNR, scorer accuracy) and sample files (PNG grids, WAVs)."""

from __future__ import annotations

import numpy as np

from latentlm_jax import paths


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats → uint8 pixels (rounded, clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 pixels → [-1, 1] float32."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of uint8 images over the whole set: 10·log10(255² / MSE)."""
    mse = np.mean(np.square(reference.astype(np.float64) - test.astype(np.float64)))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of waveforms over the whole set: 10·log10(Σx² / Σ(x − x̂)²)."""
    ref = np.asarray(reference, np.float64)
    err = np.sum(np.square(ref - np.asarray(test, np.float64)))
    return float("inf") if err == 0 else float(10.0 * np.log10(np.sum(np.square(ref)) / err))


def log_spectral_distance(reference: np.ndarray, test: np.ndarray, n_fft: int = 1024,
                          hop: int = 256, floor_db: float = -80.0) -> float:
    """Mean log-spectral distance in dB of waveforms ``[N, T]``: per STFT frame (Hann window),
    the RMS over frequency bins of the difference of the power spectra in dB, averaged over
    frames and clips. Blind to phase (unlike SNR), so it measures what the audio σ-VAEs are
    trained on; powers are floored at ``floor_db`` so exact silence does not dominate."""
    def power_db(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.shape[-1] < n_fft:
            x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_fft - x.shape[-1])])
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
        spec = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2
        return 10.0 * np.log10(np.maximum(spec, 10.0 ** (floor_db / 10.0)))

    diff = power_db(reference) - power_db(test)
    return float(np.mean(np.sqrt(np.mean(np.square(diff), axis=-1))))


def image_accuracy(images: np.ndarray, attrs: list[dict]) -> float:
    """Fraction of uint8 images the dataset's scorer finds correct for their attributes."""
    from latentlm_jax.data.scoring import score_image

    return float(np.mean([bool(score_image(im, a)["correct"]) for im, a in zip(images, attrs,
                                                                               strict=True)]))


def audio_accuracy(waves: np.ndarray, pitches: list[list[str]]) -> float:
    """Fraction of waveforms the dataset's scorer finds correct for their pitches."""
    from latentlm_jax.data.scoring import score_audio

    return float(np.mean([bool(score_audio(np.asarray(w, np.float32), p)["correct"])
                          for w, p in zip(waves, pitches, strict=True)]))


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of uint8 images [N, H, W, 3] (same N, H, W) → one uint8 [R·(H+pad)+pad, …] grid on
    a grey background."""
    n, h, w, c = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 128, np.uint8)
    for r, row in enumerate(rows):
        for i, im in enumerate(row):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[y:y + h, x:x + w] = im
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    paths.makedirs(paths.resolve(path).parent)
    with paths.open_file(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def save_wav(path: str, wave: np.ndarray, sample_rate: int) -> None:
    import soundfile

    paths.makedirs(paths.resolve(path).parent)
    with paths.open_file(path, "wb") as f:
        soundfile.write(f, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), sample_rate,
                        subtype="PCM_16", format="WAV")
