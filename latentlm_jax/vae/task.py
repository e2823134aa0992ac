"""The image and audio σ-VAE tasks for the generic trainer (``config.task = "vae_image"`` /
``"vae_audio"``); see ``latentlm_jax/train/task.py`` for the protocol and docs/vae.md."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax import paths
from latentlm_jax.data.bad_input import BadInputPolicy
from latentlm_jax.modality import MODALITY_IDS, VAE_TASKS
from latentlm_jax.vae.audio import AudioVAE, audio_forward_flops
from latentlm_jax.vae.codec import ConvVAE, Posterior
from latentlm_jax.vae.data import ExampleIterator
from latentlm_jax.vae.discriminator import adversarial_terms, disc_forward_flops
from latentlm_jax.vae.evaluation import reconstruct, reconstruct_examples, write_samples
from latentlm_jax.vae.image import ImageVAE, image_forward_flops
from latentlm_jax.vae.losses import (
    LossSettings,
    kl_divergence,
    mu_penalty,
    multi_resolution_stft_loss,
    reconstruction_loss,
)
from latentlm_jax.vae.sources import first_usable, is_builtin, open_examples

__all__ = ["AudioVAETask", "ImageVAETask", "eval_examples", "load_test_examples", "reconstruct",
           "vae_objective"]


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


def load_test_examples(config: mlc.ConfigDict, n: int) -> list[dict[str, Any]]:
    """The first ``n`` examples of the built-in test split."""
    from latentlm_jax.data.shapes_tones import ShapesTones

    ds = ShapesTones(split="test", seed=config.data.seed)
    return [ds[i] for i in range(n)]


def eval_examples(task: str, config: mlc.ConfigDict,
                  n: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """``(index, example)`` pairs a training run evaluates on, and whether they are built-in:
    the built-in test split, or the first ``n`` usable examples of the run's own data (a user
    source has no held-out split here; ``latentlm eval --config`` takes one)."""
    if is_builtin(config.data):
        return list(enumerate(load_test_examples(config, n))), True
    examples = open_examples(task, config, config.vae, config.data.split)
    return first_usable(examples, n, BadInputPolicy(config.data.bad_input)), False


class _VAETask:
    key: str  # batch entry and dataset field: "image" | "audio"

    def __init__(self, config: mlc.ConfigDict | None = None):
        del config  # every choice is read from the config passed to each method
        self._eval_cache: tuple[list[tuple[int, dict[str, Any]]], bool] | None = None

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
        """This process's batches; ``data.prefetch`` batches are made ahead by a background
        thread and ``data.num_workers`` threads read each batch's examples (0 = the producer
        reads them), without changing the batches (``vae/data.py``)."""
        d = config.data
        task = VAE_TASKS[MODALITY_IDS[self.key]]
        examples = open_examples(task, config, config.vae, d.split)
        builtin = is_builtin(d)  # procedural, already in random order: never shuffled
        return ExampleIterator(examples, self.key, config.train.global_batch_size, process_index,
                               process_count, dtype=self.batch_dtypes(config)[self.key],
                               policy=BadInputPolicy(d.bad_input),
                               shuffle_seed=d.seed if d.shuffle and not builtin else None,
                               prefetch=d.prefetch, num_workers=d.num_workers)

    def evaluate(self, model: ConvVAE, config: mlc.ConfigDict, workdir: str,
                 step: int) -> dict[str, float]:
        """Quality of decode(mode(x)) on ``vae.eval_examples`` examples (:func:`eval_examples`;
        the built-in scorer's ``recon_correct`` on built-in data); writes
        ``samples/step_<N>/reconstructions.png`` (originals above reconstructions) or
        ``{original,recon}_<i>.wav`` for the first four clips."""
        if self._eval_cache is None:
            task = VAE_TASKS[MODALITY_IDS[self.key]]
            self._eval_cache = eval_examples(task, config, config.vae.eval_examples)
        examples, builtin = self._eval_cache
        if not examples:
            return {}
        rec = reconstruct_examples(model, self.key, examples, builtin)
        if jax.process_index() == 0:
            write_samples(str(paths.join(workdir, "samples", f"step_{step}")), rec,
                          config.vae.audio.sample_rate)
        return rec.metrics

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
