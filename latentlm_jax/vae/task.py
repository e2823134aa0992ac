"""The image and audio σ-VAE tasks for the generic trainer (``config.task = "vae_image"`` /
``"vae_audio"``); see ``latentlm_jax/train/task.py`` for the protocol and docs/vae.md."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from latentlm_jax.vae import samples
from latentlm_jax.vae.audio import AudioVAE, audio_forward_flops
from latentlm_jax.vae.codec import ConvVAE, Posterior
from latentlm_jax.vae.data import ExampleIterator
from latentlm_jax.vae.discriminator import adversarial_terms, disc_forward_flops
from latentlm_jax.vae.image import ImageVAE, image_forward_flops
from latentlm_jax.vae.losses import (
    LossSettings,
    kl_divergence,
    mu_penalty,
    multi_resolution_stft_loss,
    reconstruction_loss,
)


def vae_objective(model: ConvVAE, x: jax.Array, recon: jax.Array, post: Posterior,
                  step: jax.Array | None,
                  with_stft: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted loss and its (unweighted) terms for inputs x and reconstructions of sampled z."""
    s: LossSettings = model.loss_settings
    rec = reconstruction_loss(x, recon, s.recon)
    if s.kind == "plain":
        reg = kl_divergence(post.mean, post.logvar)
        total = s.recon_weight * rec + s.kl_weight * reg
    else:
        reg = mu_penalty(post.mean)
        total = s.recon_weight * rec + s.beta * reg
    metrics = {"recon": rec, "kl_or_mu": reg}
    if with_stft:
        stft = multi_resolution_stft_loss(x, recon, s.stft_fft_sizes, s.stft_hops, s.stft_floor)
        total = total + s.stft_weight * stft
        metrics["stft"] = stft
    if model.disc is not None:
        if step is None:
            raise ValueError("the adversarial loss needs batch['step']")
        adv, adv_metrics = adversarial_terms(
            model.disc, model.to_channels_last(x), model.to_channels_last(recon), step,
            s.adv_weight, s.adv_start_step)
        total = total + adv
        metrics.update(adv_metrics)
    metrics["total"] = total
    return total, metrics


@nnx.jit
def _reconstruct(model: ConvVAE, x: jax.Array) -> jax.Array:
    return model.decode(model.mode(x))


def reconstruct(model: ConvVAE, x: np.ndarray, chunk: int = 64) -> np.ndarray:
    """decode(mode(x)) in chunks, as NumPy."""
    return np.concatenate([np.asarray(_reconstruct(model, jnp.asarray(x[i:i + chunk])))
                           for i in range(0, len(x), chunk)])


def load_test_examples(config: mlc.ConfigDict, n: int) -> list[dict[str, Any]]:
    from latentlm_jax.data.shapes_tones import ShapesTones

    ds = ShapesTones(split="test", seed=config.data.seed)
    return [ds[i] for i in range(n)]


class _VAETask:
    key: str  # batch entry and dataset field: "image" | "audio"

    def __init__(self, config: mlc.ConfigDict | None = None):
        del config  # every choice is read from the config passed to each method

    def _model_cls(self) -> type[ConvVAE]:
        raise NotImplementedError

    def _inputs(self, batch: dict[str, jax.Array]) -> jax.Array:
        raise NotImplementedError

    def _forward_flops(self, v: mlc.ConfigDict) -> float:
        raise NotImplementedError

    def build_model(self, config: mlc.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return self._model_cls()(config.vae, rngs=rngs)

    def loss_fn(self, model: ConvVAE, batch: dict[str, jax.Array],
                rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = self._inputs(batch)
        recon, post, _ = model(x, rng)
        step = batch["step"][0] if "step" in batch else None
        return vae_objective(model, x, recon, post, step, with_stft=self.key == "audio")

    def batch_dtypes(self, config: mlc.ConfigDict) -> dict[str, Any]:
        return {self.key: jnp.uint8 if self.key == "image" else jnp.float32, "step": jnp.int32}

    def train_iterator(self, config: mlc.ConfigDict, process_index: int,
                       process_count: int) -> ExampleIterator:
        from latentlm_jax.data.shapes_tones import ShapesTones

        ds = ShapesTones(split=config.data.split, seed=config.data.seed)
        return ExampleIterator(ds, self.key, config.train.global_batch_size, process_index,
                               process_count, dtype=self.batch_dtypes(config)[self.key])

    def flops_per_step(self, config: mlc.ConfigDict) -> float:
        """3 × forward (forward + backward) of encoder + decoder per example; with the
        adversarial term, three discriminator passes (real, fake, frozen fake) likewise."""
        v = config.vae
        per_example = 3.0 * self._forward_flops(v)
        if v.loss.adversarial:
            per_example += 3.0 * 3.0 * disc_forward_flops(v, self.key)
        return per_example * config.train.global_batch_size

    def items_per_step(self, config: mlc.ConfigDict) -> tuple[str, float]:
        return "examples", float(config.train.global_batch_size)


class ImageVAETask(_VAETask):
    """Batches: ``image`` uint8 [B, H, W, 3] (scaled to [-1, 1] in the loss), ``step`` [B]."""

    key = "image"

    def _model_cls(self) -> type[ConvVAE]:
        return ImageVAE

    def _inputs(self, batch):
        return batch["image"].astype(jnp.float32) / 127.5 - 1.0

    def _forward_flops(self, v):
        return image_forward_flops(v)

    def batch_logical_axes(self, config: mlc.ConfigDict) -> dict[str, tuple[str | None, ...]]:
        return {"image": ("batch", None, None, None), "step": ("batch",)}

    def batch_shape(self, config: mlc.ConfigDict, key: str) -> tuple[int, ...]:
        b, r = config.train.global_batch_size, config.vae.image.resolution
        return (b, r, r, config.vae.image.in_channels) if key == "image" else (b,)

    def evaluate(self, model: ConvVAE, config: mlc.ConfigDict, workdir: str,
                 step: int) -> dict[str, float]:
        """PSNR and scorer accuracy of decode(mode(x)) on the first test examples; writes
        ``samples/step_<N>/reconstructions.png`` (originals above reconstructions)."""
        examples = load_test_examples(config, config.vae.eval_examples)
        images = np.stack([e["image"] for e in examples])
        recon = samples.to_uint8(reconstruct(model, samples.from_uint8(images)))
        if jax.process_index() == 0:
            n = min(16, len(images))
            samples.save_png(os.path.join(workdir, "samples", f"step_{step}",
                                          "reconstructions.png"),
                             samples.image_grid([images[:n], recon[:n]]))
        return {"psnr": samples.psnr(images, recon),
                "recon_correct": samples.image_accuracy(recon, [e["image_attrs"]
                                                                for e in examples])}


class AudioVAETask(_VAETask):
    """Batches: ``audio`` float32 [B, T] in [-1, 1], ``step`` [B]."""

    key = "audio"

    def _model_cls(self) -> type[ConvVAE]:
        return AudioVAE

    def _inputs(self, batch):
        return batch["audio"].astype(jnp.float32)

    def _forward_flops(self, v):
        return audio_forward_flops(v)

    def batch_logical_axes(self, config: mlc.ConfigDict) -> dict[str, tuple[str | None, ...]]:
        return {"audio": ("batch", "length"), "step": ("batch",)}

    def batch_shape(self, config: mlc.ConfigDict, key: str) -> tuple[int, ...]:
        b = config.train.global_batch_size
        return (b, config.vae.audio.num_samples) if key == "audio" else (b,)

    def evaluate(self, model: ConvVAE, config: mlc.ConfigDict, workdir: str,
                 step: int) -> dict[str, float]:
        """Scorer accuracy and SNR of decode(mode(x)) on the first test examples; writes
        ``samples/step_<N>/{original,recon}_<i>.wav`` for the first four."""
        examples = load_test_examples(config, config.vae.eval_examples)
        waves = np.stack([e["audio"] for e in examples]).astype(np.float32)
        recon = reconstruct(model, waves)
        if jax.process_index() == 0:
            out = os.path.join(workdir, "samples", f"step_{step}")
            for i in range(min(4, len(waves))):
                sr = config.vae.audio.sample_rate
                samples.save_wav(os.path.join(out, f"original_{i}.wav"), waves[i], sr)
                samples.save_wav(os.path.join(out, f"recon_{i}.wav"), recon[i], sr)
        return {"snr_db": samples.snr_db(waves, recon),
                "recon_correct": samples.audio_accuracy(recon, [e["audio_pitches"]
                                                                for e in examples])}
