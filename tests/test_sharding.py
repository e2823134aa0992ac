"""Logical axis rules → actual parameter shardings on 8 host devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.lm.task import LMTask
from latentlm_jax.parallel.logical import logical_to_mesh_spec
from latentlm_jax.parallel.mesh import build_mesh
from latentlm_jax.train import state as state_lib
from latentlm_jax.train.optimizer import make_optimizer

pytestmark = pytest.mark.multidevice

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
         ("heads", "tensor"), ("vocab", "tensor"), ("layers", None))


def test_logical_to_mesh_spec():
    assert logical_to_mesh_spec(("batch", "length"), RULES) == P(("data", "fsdp"), None)
    assert logical_to_mesh_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    # A mesh axis shards at most one dimension: the second "embed" stays replicated.
    assert logical_to_mesh_spec(("embed", "embed"), RULES) == P("fsdp", None)
    # Unknown names and None are replicated; axes missing from the mesh are dropped.
    assert logical_to_mesh_spec(("unknown", None), RULES) == P(None, None)
    assert logical_to_mesh_spec(("batch",), RULES, mesh_axes=("data",)) == P("data")
    # First matching rule wins.
    assert logical_to_mesh_spec(("embed",), (("embed", "tensor"), ("embed", "fsdp"))) == P("tensor")


def _sharded_state(ici: dict[str, int]):
    config = base_config()
    config.model.emb_dim, config.model.mlp_dim, config.model.num_layers = 64, 128, 2
    config.model.num_heads, config.model.num_kv_heads, config.model.head_dim = 4, 2, 16
    for axis, size in ici.items():
        config.mesh.ici[axis] = size
    mesh = build_mesh(config)
    task = LMTask(config)
    tx = make_optimizer(config.train)
    _, abs_params, specs = state_lib.abstract_model(task, config)
    p_sh = state_lib.param_shardings(abs_params, specs, mesh, config.sharding_rules)
    s_sh = state_lib.state_shardings(abs_params, p_sh, tx, mesh)
    return config, mesh, specs, state_lib.init_state(task, config, tx, s_sh)


def test_every_parameter_is_sharded_by_the_rules():
    config, mesh, specs, state = _sharded_state({"data": 2, "fsdp": 2, "tensor": 2})
    flat_specs = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, P))[0]
    flat_params = dict(jax.tree_util.tree_flatten_with_path(state["params"])[0])
    assert len(flat_specs) == len(flat_params) > 10
    for path, logical in flat_specs:
        arr = flat_params[path]
        assert all(name is not None for name in logical), f"{path} lacks logical names"
        want = logical_to_mesh_spec(logical, config.sharding_rules, mesh.axis_names)
        got = arr.sharding.spec
        norm = lambda s, n=arr.ndim: tuple(s) + (None,) * (n - len(s))
        assert norm(got) == norm(want), f"{jax.tree_util.keystr(path)}: {got} != {want}"
        # The shard shape is what the spec implies.
        shard = arr.addressable_shards[0].data.shape
        expected = list(arr.shape)
        for i, axes in enumerate(norm(want)):
            names = () if axes is None else (axes,) if isinstance(axes, str) else axes
            for a in names:
                expected[i] //= mesh.shape[a]
        assert tuple(expected) == shard
    # Spot checks of the table itself.
    blocks = state["params"]["decoder"]["blocks"]
    assert tuple(blocks["mlp"]["gate"].sharding.spec)[:3] == (None, "fsdp", "tensor")
    assert tuple(state["params"]["embed"]["embedding"].sharding.spec) == ("tensor", "fsdp")


def test_fsdp8_holds_an_eighth_of_params_and_optimizer_state():
    _, _, _, state = _sharded_state({"data": 1, "fsdp": 8})
    per_device = state_lib.bytes_per_device({"params": state["params"],
                                             "opt": state["opt_state"]})
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                for x in jax.tree.leaves({"params": state["params"], "opt": state["opt_state"]}))
    assert len(per_device) == 8
    for device, nbytes in per_device.items():
        # Norm scales stay replicated, so allow a few % above an exact eighth.
        assert total / 8 <= nbytes <= total / 8 * 1.05, (device, nbytes, total)
    # Each optimizer moment has its parameter's sharding.
    mu = state["opt_state"][1][0].mu
    assert mu["lm_head"]["kernel"].sharding == state["params"]["lm_head"]["kernel"].sharding


def test_mesh_fill_and_mismatch_errors():
    config = base_config()
    config.mesh.ici.data, config.mesh.ici.fsdp, config.mesh.ici.tensor = -1, 2, 2
    assert dict(build_mesh(config).shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
    config.mesh.ici.data = 3
    with pytest.raises(ConfigError, match="mesh.ici"):
        build_mesh(config)
