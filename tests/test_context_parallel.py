"""Context parallelism: sequences split over the "context" mesh axis give the loss and gradients
of one device, with keys and values all-gathered along the length; the axis's config checks;
runs written before the axis existed still load."""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.models import attention as A
from latentlm_jax.models.transformer import TextLM
from latentlm_jax.parallel.logical import activation_rules, logical_to_mesh_spec
from latentlm_jax.parallel.mesh import build_mesh
from latentlm_jax.parallel.mesh_check import check_mesh
from tests.helpers import tiny_model

pytestmark = pytest.mark.multidevice


def _config(impl: str, seq_len: int, **ici):
    c = base_config()
    tiny_model(c.model, attention=impl)
    c.data.seq_len, c.train.global_batch_size = seq_len, 4
    c.mesh.ici.data = 1
    for axis, size in ici.items():
        c.mesh.ici[axis] = size
    return c


def _batch(length: int):
    """Four rows: three documents + padding, two documents, one, one + padding."""
    a = length // 4
    seg = np.stack([np.repeat([1, 2, 3, 0], [a, a + 5, a, length - 3 * a - 5]),
                    np.repeat([1, 2], [length - 30, 30]), np.ones(length, int),
                    np.repeat([1, 0], [length - 7, 7])]).astype(np.int32)
    pos = np.zeros_like(seg)
    for b in range(seg.shape[0]):
        for s in np.unique(seg[b]):
            idx = np.where(seg[b] == s)[0]
            pos[b, idx] = np.arange(len(idx))
    tokens = np.random.default_rng(0).integers(0, 264, seg.shape).astype(np.int32)
    return tokens, pos, seg


def _loss_and_grads(config, devices):
    """Next-token loss and its gradients, on ``devices`` under the config's mesh and rules;
    also the compiled program's text."""
    mesh = build_mesh(config, devices)
    graphdef, params = nnx.split(TextLM(config.model, rngs=nnx.Rngs(0)))

    def loss(params, tokens, pos, seg):
        logits = nnx.merge(graphdef, params)(tokens, pos, seg).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        target = jnp.take_along_axis(logp, jnp.roll(tokens, -1, axis=1)[..., None], -1)[..., 0]
        return -jnp.sum(target * (seg > 0)) / jnp.sum(seg > 0)

    spec = logical_to_mesh_spec(("batch", "length"), config.sharding_rules, mesh.axis_names)
    batch = [jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))
             for x in _batch(config.data.seq_len)]
    params = jax.device_put(params, NamedSharding(mesh, P()))
    with activation_rules(mesh, config.sharding_rules), A.splash_interpreted():
        fn = jax.jit(jax.value_and_grad(loss))
        hlo = fn.lower(params, *batch).compile().as_text()
        value, grads = fn(params, *batch)
    return float(value), [np.asarray(g) for g in jax.tree.leaves(grads)], hlo


@functools.cache
def _one_device(seq_len: int):
    return _loss_and_grads(_config("xla", seq_len), jax.devices()[:1])[:2]


def _check_against_one_device(impl: str, seq_len: int, ici: dict[str, int]):
    one, one_grads = _one_device(seq_len)
    config = _config(impl, seq_len, **ici)
    value, grads, hlo = _loss_and_grads(config, jax.devices())
    np.testing.assert_allclose(value, one, rtol=1e-6)
    for got, want in zip(grads, one_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    return config, hlo


@pytest.mark.parametrize("impl,ici", [
    ("xla", {"context": 4, "fsdp": 2}),
    ("dot_product", {"context": 2, "fsdp": 2, "tensor": 2}),
])
def test_context_parallel_matches_one_device(impl, ici):
    """8 devices with the sequence split 4 or 2 ways == 1 device with the reference; keys and
    values are all-gathered to the full length (f32[batch shard, L, kv heads shard, D])."""
    seq_len = 64
    config, hlo = _check_against_one_device(impl, seq_len, ici)
    m = config.model
    local_batch = 4 // ici["fsdp"]
    kv_heads = m.num_kv_heads // ici.get("tensor", 1)
    gathered = f"f32[{local_batch},{seq_len},{kv_heads},{m.head_dim}]"
    all_gathers = [line for line in hlo.splitlines() if re.search(r"all-gather(-start)?\(", line)]
    assert any(gathered in line for line in all_gathers), (gathered, all_gathers)


@pytest.mark.slow
def test_splash_context_parallel_matches_one_device():
    """The splash kernel (interpreted) under shard_map: each of 2 context shards gets its 128
    query rows and the matching part of the causal mask; batch over fsdp, heads over tensor."""
    _check_against_one_device("splash", 256, {"context": 2, "fsdp": 2, "tensor": 2})


def test_context_axis_config_checks():
    c = _config("xla", 60, context=8)
    with pytest.raises(ConfigError, match=r"data\.seq_len: 60 does not split over context=8"):
        check_mesh(c, 8)
    c = _config("splash", 512, context=8)
    with pytest.raises(ConfigError, match=r"data\.seq_len: splash attention needs"):
        check_mesh(c, 8)
    c.data.seq_len = 1024
    ici, _ = check_mesh(c, 8)
    assert ici["context"] == 8 and ici["data"] == 1


def test_run_config_from_before_the_context_axis_loads(tmp_path):
    """An older run's config.json (three mesh axes, no model.attention, no context entries)
    loads with the defaults filled in, validates and builds its mesh."""
    from latentlm_jax.train.checkpoint_io import load_run_config

    old = base_config().to_dict()
    del old["model"]["attention"]
    old["mesh"] = {"axes": ["data", "fsdp", "tensor"], "ici": {"data": -1, "fsdp": 1, "tensor": 1},
                   "dcn": {"data": 1, "fsdp": 1, "tensor": 1}}
    old["sharding_rules"] = [[name, None if name == "length" else mesh]
                             for name, mesh in old["sharding_rules"]]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = load_run_config(str(tmp_path))
    assert config.model.attention == "xla" and config.mesh.ici.context == 1
    validate(config)
    assert dict(build_mesh(config).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
