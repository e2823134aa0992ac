"""Centred STFT / inverse STFT with n_fft = 4·hop: the audio VAE's front end and decoder head.

Why a spectral representation: a waveform decoder must learn to synthesise phase-exact
oscillations sample by sample, which takes far more steps than a few CPU minutes allow; with
spectra, pitch is a per-frame, per-bin quantity for the encoder to read and the decoder to write,
and the inverse FFT does the last ×hop of upsampling (as in Vocos).

Conventions: frame f covers samples [f·hop − n_fft/2, f·hop + n_fft/2) of the zero-padded signal;
periodic Hann window for analysis and synthesis; overlap-add normalised by the overlapped sum of
squared windows, so ``istft(stft(x)) == x``.

Phase reference: the decoder predicts each bin's phase relative to absolute time, not to its
frame's start. In the frame-local convention a steady tone at bin k turns by 2π·k·hop/n_fft per
frame, a rotation a convolution (translation-equivariant, blind to the frame index) cannot
produce; in the absolute one it is constant, and constant outputs are what convolutions do well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OVERLAP = 4  # n_fft / hop


def hann_window(n: int) -> jax.Array:
    """Periodic Hann window (numpy.hanning is the symmetric one)."""
    return 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * jnp.arange(n) / n)


def num_bins(hop: int) -> int:
    return OVERLAP * hop // 2 + 1


def stft(x: jax.Array, hop: int) -> jax.Array:
    """Waveforms [B, T] (T a multiple of hop) → complex frames [B, T/hop, n_fft/2 + 1]."""
    n_fft = OVERLAP * hop
    b, t = x.shape
    padded = jnp.pad(x.astype(jnp.float32), ((0, 0), (n_fft // 2, n_fft // 2)))
    idx = jnp.arange(t // hop)[:, None] * hop + jnp.arange(n_fft)[None, :]
    return jnp.fft.rfft(padded[:, idx] * hann_window(n_fft), axis=-1)


def log_magnitude(spec: jax.Array, floor: float = 1e-2) -> jax.Array:
    """log(|X| + floor): the encoder's input features (bounded below, smooth at 0)."""
    return jnp.log(jnp.abs(spec) + floor)


def overlap_add(frames: jax.Array, hop: int) -> jax.Array:
    """[B, F, K·hop] → [B, (F + K − 1)·hop]: frame f added at offset f·hop."""
    b, f, n = frames.shape
    k = n // hop
    parts = frames.reshape(b, f, k, hop)
    out = sum(jnp.pad(parts[:, :, i], ((0, 0), (i, k - 1 - i), (0, 0))) for i in range(k))
    return out.reshape(b, (f + k - 1) * hop)


def frame_phase(num_frames: int, hop: int) -> jax.Array:
    """exp(2πi·k·f·hop/n_fft), [F, n_fft/2 + 1]: absolute-time → frame-local phase reference."""
    n_fft = OVERLAP * hop
    k = jnp.arange(n_fft // 2 + 1)
    turns = (jnp.arange(num_frames)[:, None] * k[None, :] * hop) % n_fft / n_fft  # exact ints
    return jnp.exp(2j * jnp.pi * turns.astype(jnp.float32))


def istft(spec: jax.Array, hop: int, length: int, absolute_phase: bool = False) -> jax.Array:
    """Complex frames [B, F, n_fft/2 + 1] → waveforms [B, length] by inverse rFFT, Hann window
    and normalised overlap-add. ``absolute_phase``: ``spec`` holds phases relative to absolute
    time (see the module docstring) and is rotated to the frame-local convention first."""
    n_fft = OVERLAP * hop
    window = hann_window(n_fft)
    if absolute_phase:
        spec = spec * frame_phase(spec.shape[1], hop)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * window
    wave = overlap_add(frames, hop)
    norm = overlap_add(jnp.broadcast_to(window**2, (1, spec.shape[1], n_fft)), hop)
    start = n_fft // 2
    wave, norm = wave[:, start:start + length], norm[:, start:start + length]
    return wave / jnp.maximum(norm, 1e-3)
