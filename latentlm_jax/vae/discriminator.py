"""Optional adversarial term: a small patch discriminator with hinge losses (off by default).

The generic trainer has ONE optimizer and one loss. The discriminator is therefore a submodule of
the VAE (``model.disc``) and both objectives go into the same scalar, each with gradients stopped
where they must not flow:

    total = … + w·g_on·(−mean D_frozen(x̂))        # generator term: D's params stop-gradiented
              + g_on·(hinge(D(x)) + hinge(−D(sg(x̂))))  # discriminator term: x̂ stop-gradiented

so d total/d θ_G is the generator's gradient and d total/d θ_D the discriminator's hinge
gradient, and one optimizer step updates both (same learning rate and schedule; weight decay
applies to both). ``g_on`` is 0 before ``vae.loss.adv_start_step`` (the step comes from the batch,
``batch["step"]``), so until then the discriminator receives no gradient at all.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from latentlm_jax.vae.layers import Conv, GroupNorm, conv_flops

# (spatial dims, kernel, stride) of the discriminator per modality.
DISC_GEOMETRY = {"image": (2, 4, 2), "audio": (1, 16, 4)}


class PatchDiscriminator(nnx.Module):
    """Strided convs (LeakyReLU 0.2, GroupNorm after the first) → one logit per patch."""

    def __init__(self, in_ch: int, channels: int, num_layers: int, *, ndim: int, kernel: int,
                 stride: int, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.convs = nnx.List()
        self.norms = nnx.List()
        ch_in = in_ch
        for i in range(num_layers):
            ch = channels * 2 ** min(i, 3)
            self.convs.append(Conv(ch_in, ch, kernel, ndim=ndim, stride=stride, dtype=dtype,
                                   rngs=rngs))
            if i:
                self.norms.append(GroupNorm(ch, dtype=dtype, rngs=rngs))
            ch_in = ch
        self.out = Conv(ch_in, 1, 3, ndim=ndim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:], self.norms, strict=True):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.out(h).astype(jnp.float32)


def disc_forward_flops(v: mlc.ConfigDict, modality: str) -> float:
    """Forward FLOPs of the discriminator on one example of ``modality``."""
    ndim, kernel, stride = DISC_GEOMETRY[modality]
    if modality == "image":
        side, ch_in = v.image.resolution, v.image.in_channels
    else:
        side, ch_in = v.audio.num_samples, 1
    f = 0.0
    for i in range(v.loss.disc_layers):
        ch = v.loss.disc_channels * 2 ** min(i, 3)
        f += conv_flops(side, kernel, ndim, ch_in, ch, stride=stride)
        side, ch_in = -(-side // stride), ch
    return f + conv_flops(side, 3, ndim, ch_in, 1)


def frozen_call(module: nnx.Module, x: jax.Array) -> jax.Array:
    """``module(x)`` with no gradient flowing into the module's parameters (only into x)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))(x)


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
    return -jnp.mean(fake_logits)


def adversarial_terms(disc: PatchDiscriminator, real: jax.Array, fake: jax.Array,
                      step: jax.Array, weight: float,
                      start_step: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(contribution to the total loss, metrics); see the module docstring."""
    on = (jnp.asarray(step) >= start_step).astype(jnp.float32)
    g = hinge_g_loss(frozen_call(disc, fake))
    d = hinge_d_loss(disc(real), disc(jax.lax.stop_gradient(fake)))
    return on * (weight * g + d), {"adv_g": g, "adv_d": d, "adv_on": on}
