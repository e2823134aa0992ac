"""Inception-v3 as the FID reference network has it (pytorch-fid's ``fid_inception_v3``), in NNX.

FID is only comparable between papers when computed with the same network, weights and resize.
The FID network is TensorFlow's ``inception-2015-12-05`` graph, which differs from torchvision's
Inception-v3 in four places, reproduced here as pytorch-fid does:

- the average pools inside ``Mixed_5b…5d`` (A blocks), ``Mixed_6b…6e`` (C blocks) and ``Mixed_7b``
  (first E block) leave the zero padding out of the average (``count_include_pad=False``);
- the pool branch of ``Mixed_7c`` (second E block) is a 3×3 *max* pool, not an average pool;
- the classifier has 1008 classes (1000 ImageNet classes + 8 unused);
- batch norms use ε = 0.001.

Input: RGB images ``[B, H, W, 3]`` (uint8 0…255, or floats in [0, 1]), resized bilinearly to
299×299 (``align_corners=False``, no antialiasing: ``torch.nn.functional.interpolate`` as
pytorch-fid calls it), then scaled to [-1, 1]. Output: the 2048-d final average pool (FID's
features) and the 1008 logits of the Inception Score, computed as the original IS code does
(pool features × the classifier's weight matrix, no bias).

Attribute names follow torchvision's (``Mixed_5b.branch1x1.conv``…) so converted weights map
name for name (``weights.py``). Layout is channels-last; convolutions run in float32 at
``Precision.HIGHEST`` (a TPU's default bf16 passes would move the figures).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """Convolution without bias → batch norm (inference statistics, ε = 0.001) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0, rngs: nnx.Rngs):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(cin, cout, _pair(kernel), strides=_pair(stride),
                             padding=((ph, ph), (pw, pw)), use_bias=False, precision=_HIGHEST,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3×3, stride 1, padding 1, the padding left out of the average (TensorFlow's pool)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                        count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nnx.Module):
    """35×35 block (FIDInceptionA): 64 + 64 + 96 + ``pool_features`` channels."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        c = partial(BasicConv2d, rngs=rngs)
        self.branch1x1 = c(cin, 64, 1)
        self.branch5x5_1 = c(cin, 48, 1)
        self.branch5x5_2 = c(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = c(cin, 64, 1)
        self.branch3x3dbl_2 = c(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = c(96, 96, 3, padding=1)
        self.branch_pool = c(cin, pool_features, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """35→17 reduction (torchvision's InceptionB, unchanged): 384 + 96 + ``cin`` channels."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        c = partial(BasicConv2d, rngs=rngs)
        self.branch3x3 = c(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = c(cin, 64, 1)
        self.branch3x3dbl_2 = c(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = c(96, 96, 3, stride=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nnx.Module):
    """17×17 block with factorised 7×7 convolutions (FIDInceptionC): 4 × 192 channels."""

    def __init__(self, cin: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c, c7 = partial(BasicConv2d, rngs=rngs), channels_7x7
        self.branch1x1 = c(cin, 192, 1)
        self.branch7x7_1 = c(cin, c7, 1)
        self.branch7x7_2 = c(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = c(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = c(cin, c7, 1)
        self.branch7x7dbl_2 = c(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = c(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = c(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = c(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = c(cin, 192, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), b7, d, bp], axis=-1)


class InceptionD(nnx.Module):
    """17→8 reduction (torchvision's InceptionD, unchanged): 320 + 192 + ``cin`` channels."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        c = partial(BasicConv2d, rngs=rngs)
        self.branch3x3_1 = c(cin, 192, 1)
        self.branch3x3_2 = c(192, 320, 3, stride=2)
        self.branch7x7x3_1 = c(cin, 192, 1)
        self.branch7x7x3_2 = c(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = c(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = c(192, 192, 3, stride=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nnx.Module):
    """8×8 block with split 1×3 / 3×1 outputs: 320 + 768 + 768 + 192 = 2048 channels. The pool
    branch is an average pool without the padding (``FIDInceptionE_1``, ``Mixed_7b``) or a max
    pool (``FIDInceptionE_2``, ``Mixed_7c``)."""

    def __init__(self, cin: int, *, max_pool: bool, rngs: nnx.Rngs):
        c = partial(BasicConv2d, rngs=rngs)
        self.max_pool = max_pool
        self.branch1x1 = c(cin, 320, 1)
        self.branch3x3_1 = c(cin, 384, 1)
        self.branch3x3_2a = c(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = c(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = c(cin, 448, 1)
        self.branch3x3dbl_2 = c(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = c(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = c(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = c(cin, 192, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
        if self.max_pool:
            pooled = nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        return jnp.concatenate([self.branch1x1(x), b3, d, self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
    """The FID Inception-v3 up to its final average pool, plus the 1008-class classifier."""

    def __init__(self, *, rngs: nnx.Rngs):
        c = partial(BasicConv2d, rngs=rngs)
        self.Conv2d_1a_3x3 = c(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = c(32, 32, 3)
        self.Conv2d_2b_3x3 = c(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = c(64, 80, 1)
        self.Conv2d_4a_3x3 = c(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)
        self.fc = nnx.Linear(FEATURE_DIM, NUM_CLASSES, precision=_HIGHEST, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x``: float ``[B, H, W, 3]`` in [-1, 1] (H, W ≥ 75) → (pool features ``[B, 2048]``,
        IS logits ``[B, 1008]``)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max_pool_3x3_s2(x)))
        x = _max_pool_3x3_s2(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        features = x.mean(axis=(1, 2))
        logits = jnp.matmul(features, self.fc.kernel[...], precision=_HIGHEST)
        return features, logits


_PIXEL_TO_FLOAT = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float32)


def to_inception_input(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` (or floats in [0, 1]) → float32 ``[B, size, size, 3]`` in [-1, 1]:
    bilinear, half-pixel centres, no antialiasing (``F.interpolate(..., mode="bilinear",
    align_corners=False)``, what pytorch-fid runs), then ``2x - 1``. A pixel k becomes float32
    k/255 correctly rounded (pytorch-fid's ``ToTensor``), so floats that are exactly k/255 (a
    ``.npy`` of the same images) give the same input: looked up in a table, because XLA turns
    ``x / 255`` into ``x · (1/255)``, one ulp off for some k."""
    if images.dtype == jnp.uint8:
        x = jnp.asarray(_PIXEL_TO_FLOAT)[images]
    else:
        x = images.astype(jnp.float32)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear",
                             antialias=False)
    return 2.0 * x - 1.0


@partial(jax.jit, static_argnames=("graphdef", "size"))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array,
             size: int) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    return model(to_inception_input(images, size))


def extract(model: FIDInceptionV3, images: jax.Array,
            size: int = INPUT_SIZE) -> tuple[jax.Array, jax.Array]:
    """(pool features ``[B, 2048]``, IS logits ``[B, 1008]``) of RGB ``images [B, H, W, 3]``;
    compiled once per (model structure, batch shape) and reused across calls and modules."""
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, images, size)

