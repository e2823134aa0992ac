"""The FID Inception's weights as one ``.npz``: names, the pytorch-fid → JAX conversion, loading.

Keys are the module's own paths, ``Mixed_5b/branch1x1/conv/kernel`` (convolution kernels
``[kh, kw, in, out]``), ``…/bn/scale``, ``bn/bias``, ``bn/mean``, ``bn/var``, ``fc/kernel``
``[2048, 1008]`` and ``fc/bias``. ``convert_torch_state_dict`` maps pytorch-fid's state dict
(``Mixed_5b.branch1x1.conv.weight`` ``[out, in, kh, kw]``, ``….bn.running_mean``…) onto them;
``python -m latentlm_jax.image_metrics.convert`` is the one-off step that runs it on the ``.pth``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.image_metrics.inception import FIDInceptionV3
from latentlm_jax.image_metrics.npz import read_npz, write_npz

WHAT = "Inception weights"
# torch suffix → (our leaf path, transpose of the array)
_TORCH_LEAVES = {
    "conv.weight": ("conv/kernel", (2, 3, 1, 0)),
    "bn.weight": ("bn/scale", None),
    "bn.bias": ("bn/bias", None),
    "bn.running_mean": ("bn/mean", None),
    "bn.running_var": ("bn/var", None),
}
_TORCH_FC = {"fc.weight": ("fc/kernel", (1, 0)), "fc.bias": ("fc/bias", None)}


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    return {"/".join(str(p) for p in path): v for path, v in nnx.iter_graph(model)
            if isinstance(v, nnx.Param | nnx.BatchStat)}


def weight_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every weight of ``model`` by name, as float32 NumPy arrays."""
    return {k: np.asarray(v.get_value(), np.float32) for k, v in _variables(model).items()}


def abstract_model() -> FIDInceptionV3:
    """The network without weights (shapes only, nothing computed): :func:`load_weights` or
    :func:`random_model` fill it in. Initialising 24M parameters through JAX op by op would cost
    seconds of compiles for values that are then replaced."""
    return nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)))


def random_model(seed: int = 0) -> FIDInceptionV3:
    """A randomly initialised network, for tests and dry runs: figures from it compare to
    nothing. Kernels are He-normal (variance 2 / fan-in), which keeps activations at a usable
    scale through the ~95 ReLU layers; batch norms are the identity."""
    model = abstract_model()
    rng = np.random.default_rng(seed)
    for name, var in _variables(model).items():
        shape, leaf = tuple(var.shape), name.rsplit("/", 1)[-1]
        if leaf == "kernel":
            a = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / np.prod(shape[:-1]))
        else:  # scale, var → 1; bias, mean → 0
            a = np.full(shape, 1.0 if leaf in ("scale", "var") else 0.0, np.float32)
        var.set_value(jnp.asarray(a, jnp.float32))
    return model


def save_weights(model: nnx.Module, path: str) -> None:
    write_npz(path, weight_arrays(model))


def check_weight_arrays(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                        path: str) -> None:
    """``arrays`` must be exactly the network's weights (``shapes``: name → shape), finite
    floats: a missing, extra or misshapen array is one line naming ``path`` and the first
    offending key."""
    missing = sorted(set(shapes) - set(arrays))
    extra = sorted(set(arrays) - set(shapes))
    if missing:
        raise ConfigError("", f"{WHAT}: {path} lacks {len(missing)} of the network's "
                              f"{len(shapes)} arrays (first: {missing[0]}); convert the "
                              "weights with python -m latentlm_jax.image_metrics.convert")
    if extra:
        raise ConfigError("", f"{WHAT}: {path} has {len(extra)} arrays the network does not "
                              f"(first: {extra[0]}); is it the FID Inception's?")
    for name, want in shapes.items():
        got = arrays[name]
        if got.shape != want:
            raise ConfigError("", f"{WHAT}: {path}: {name} has shape {got.shape}, the network "
                                  f"expects {want}")
        if not np.issubdtype(got.dtype, np.floating) or not np.isfinite(got).all():
            raise ConfigError("", f"{WHAT}: {path}: {name} is not finite floating point")


def weight_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Name → shape of every weight (``model`` may be abstract, from ``nnx.eval_shape``)."""
    return {k: tuple(v.shape) for k, v in _variables(model).items()}


def load_weights(model: nnx.Module, path: str) -> None:
    """Loads the ``.npz`` at ``path`` into ``model`` in place, after
    :func:`check_weight_arrays`."""
    arrays = read_npz(path, WHAT)
    variables = _variables(model)
    check_weight_arrays(arrays, weight_shapes(model), path)
    for name, var in variables.items():
        var.set_value(jnp.asarray(arrays[name], jnp.float32))


def _torch_key(torch_name: str) -> tuple[str, tuple[int, ...] | None] | None:
    """Our name and transpose for one pytorch-fid key; None for bookkeeping entries."""
    if torch_name.endswith("num_batches_tracked"):
        return None
    if torch_name in _TORCH_FC:
        return _TORCH_FC[torch_name]
    for suffix, (leaf, perm) in _TORCH_LEAVES.items():
        if torch_name.endswith("." + suffix):
            module = torch_name[: -len(suffix) - 1].replace(".", "/")
            return f"{module}/{leaf}", perm
    raise ConfigError("", f"{WHAT}: unexpected key {torch_name!r} in the PyTorch state dict "
                          "(not pytorch-fid's pt_inception-2015-12-05 weights?)")


def convert_torch_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid's Inception state dict (as NumPy arrays) → the ``.npz`` arrays
    :func:`load_weights` reads (NCHW kernels to HWIO, the classifier transposed)."""
    out = {}
    for torch_name, array in state.items():
        mapped = _torch_key(torch_name)
        if mapped is None:
            continue
        name, perm = mapped
        a = np.asarray(array, np.float32)
        out[name] = np.ascontiguousarray(a.transpose(perm) if perm else a)
    return out
