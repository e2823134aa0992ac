"""Audio σ-VAE: waveform [B, T] → T/hop latent frames → back.

Two representations (``vae.audio.representation``), both 1-D conv stacks over time with strided
convolutions down to the latent rate and sub-pixel upsampling back:

- ``stft`` (default): the encoder reads log-magnitude STFT frames (hop ``stft_hop``, n_fft =
  4·hop) and the decoder predicts STFT frames as log-magnitude and phase, which a fixed inverse
  STFT turns into samples (Vocos-style; see ``stft.py`` for why and for the phase convention).
  hop = stft_hop · Π strides.
- ``waveform``: samples folded into channels (``patch_size``) in, the mirror image out.
  hop = patch_size · Π strides. Learns far more slowly: see docs/vae.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax.vae.codec import ConvVAE, Geometry, codec_forward_flops
from latentlm_jax.vae.config import per_level
from latentlm_jax.vae.discriminator import DISC_GEOMETRY, PatchDiscriminator
from latentlm_jax.vae.losses import LossSettings
from latentlm_jax.vae.stft import istft, log_magnitude, num_bins, stft

REPRESENTATIONS = ("stft", "waveform")


def audio_geometry(v: mlc.ConfigDict) -> Geometry:
    au = v.audio
    if au.representation not in REPRESENTATIONS:
        raise ValueError(f"vae.audio.representation must be one of {REPRESENTATIONS}; "
                         f"got {au.representation!r}")
    n = len(au.strides)
    if au.representation == "stft":
        bins = num_bins(au.stft_hop)
        io = dict(in_channels=bins, out_channels=2 * bins, patch=1)
    else:
        io = dict(in_channels=1, out_channels=1, patch=au.patch_size)
    return Geometry(ndim=1, **io, strides=tuple(au.strides),
                    channels=tuple(au.channels * m for m in per_level(au.channel_mult, n + 1)),
                    res_blocks=per_level(au.num_res_blocks, n + 1),
                    kernel=au.kernel_size, down_kernel=tuple(2 * s for s in au.strides),
                    up_kernel=3)


MAX_LOG_MAGNITUDE = 8.0  # exp(8) ≈ 3000, far above a full-scale sine's ≈ n_fft/4


def polar_spectrum(y: jax.Array) -> jax.Array:
    """Decoder output [..., 2·bins] → complex spectrum exp(m)·e^{iφ}: log-magnitudes m, phases φ
    (Vocos). In the log domain a bin's loss gradient does not vanish as its magnitude → 0, as it
    does for a (re, im) output, so silent bins can still be switched on."""
    bins = y.shape[-1] // 2
    mag = jnp.exp(jnp.minimum(y[..., :bins], MAX_LOG_MAGNITUDE))
    phase = y[..., bins:]
    return jax.lax.complex(mag * jnp.cos(phase), mag * jnp.sin(phase))


class AudioVAE(ConvVAE):
    """Takes and returns [B, T] waveforms; latents are [B, T/hop, latent_dim]."""

    def __init__(self, v: mlc.ConfigDict, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(v.dtype)
        super().__init__(audio_geometry(v), v.audio.latent_dim, kind=v.kind, std=v.std,
                         dtype=dtype, rngs=rngs)
        self.representation, self.stft_hop = v.audio.representation, v.audio.stft_hop
        self.num_samples = v.audio.num_samples
        self.loss_settings = LossSettings.from_config(v)
        ndim, kernel, stride = DISC_GEOMETRY["audio"]
        self.disc = (PatchDiscriminator(1, v.loss.disc_channels, v.loss.disc_layers, ndim=ndim,
                                        kernel=kernel, stride=stride, dtype=dtype, rngs=rngs)
                     if v.loss.adversarial else None)

    def to_channels_last(self, x: jax.Array) -> jax.Array:
        if self.representation == "stft":
            return log_magnitude(stft(x, self.stft_hop))
        return x[..., None]

    def from_channels_last(self, y: jax.Array) -> jax.Array:
        if self.representation == "stft":
            return istft(polar_spectrum(y), self.stft_hop, self.num_samples, absolute_phase=True)
        return y[..., 0]

    def waveform_channels_last(self, x: jax.Array) -> jax.Array:
        """[B, T] → [B, T, 1], the layout the discriminator reads."""
        return x[..., None]


def audio_forward_flops(v: mlc.ConfigDict) -> float:
    """Forward FLOPs of encoder + decoder for one clip (the STFTs are left out: O(n log n))."""
    out = v.audio.latent_dim * (2 if v.kind == "plain" else 1)
    hop = v.audio.stft_hop if v.audio.representation == "stft" else 1
    return codec_forward_flops(audio_geometry(v), v.audio.num_samples // hop,
                               v.audio.latent_dim, out)
