"""The non-finite step guard (train.nonfinite = halt | skip): a NaN/Inf loss, loss term or gradient
never updates parameters, optimizer state or EMA, never reaches a checkpoint, and stops the run
with one line naming the step and the terms."""

import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.train import setup as setup_lib
from latentlm_jax.train.nonfinite import NonFiniteError
from latentlm_jax.train.trainer import train
from tests.helpers import (
    LM_TINY,
    latentlm_command,
    one_device_env,
    read_metrics,
    tiny_lm_config,
    tiny_vae_run_config,
)
from tests.test_latentlm import model_cfg, t2i_batch

ONE = jax.devices()[:1]


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_same(a, b):
    """Bitwise equality of two pytrees of arrays."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(x, y, equal_nan=False), (x, y)


def assert_finite(tree):
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------ the jitted step (LatentLM)
def latentlm_setup(mode: str, max_nonfinite: int = 10):
    """A one-device LatentLM setup (EMA on) for ``t2i_batch``'s single row."""
    c = base_config()
    c.model = model_cfg(num_layers=1)
    c.model.head.depth = 1
    c.data.seq_len = t2i_batch()["tokens"].shape[1]
    c.train.global_batch_size, c.train.warmup_steps, c.train.ema_decay = 1, 0, 0.9
    c.train.nonfinite, c.train.max_nonfinite = mode, max_nonfinite
    c.mesh.ici.data = 1
    return setup_lib.build_setup(c, ONE)


@pytest.fixture(scope="module")
def skip_setup():
    """Shared by the step tests: one compile (halt differs only in when ``halt_step`` is set,
    which the trainer tests cover)."""
    return latentlm_setup("skip", max_nonfinite=3)


def test_nonfinite_latents_leave_the_state_untouched(skip_setup):
    """A NaN (then an Inf) latent makes the diffusion term non-finite: params, optimizer state
    (count included) and EMA stay bitwise; step advances; the counters record it; three in a row
    set ``halt_step``."""
    setup = skip_setup
    good = t2i_batch()
    state, m = setup.step_fn(setup.init_state(), good)
    before = host(state)
    assert int(m["nonfinite"]) == 0 and np.isfinite(float(m["loss"]))
    for i, value in enumerate([np.nan, np.inf]):
        bad = dict(good, latents=good["latents"].at[0, 4, 0].set(value))
        state, m = setup.step_fn(state, bad)
        m = host(m)
        assert int(m["nonfinite"]) == 1 and int(m["nonfinite_skipped"]) == i + 1
        assert not np.isfinite(m["diff/image"]) and not np.isfinite(m["loss"])
        assert np.isfinite(m["ce"])  # the text term is fine; the step is skipped all the same
        after = host(state)
        for key in ("params", "opt_state", "ema"):
            assert_same(after[key], before[key])
        assert int(after["step"]) == 2 + i
    guard = host(state["nonfinite"])
    assert int(guard["halt_step"]) == 0  # 2 in a row, max 3
    assert int(guard["run"]) == 2 and int(guard["skipped"]) == 2
    state, m = setup.step_fn(state, good)  # a good step updates again and ends the run of bad
    assert int(m["nonfinite"]) == 0 and int(state["nonfinite"]["run"]) == 0
    assert not np.array_equal(host(state["params"])["embed"]["embedding"],
                              before["params"]["embed"]["embedding"])
    assert_finite(host(state))
    for _ in range(3):  # three bad in a row trip the guard at the third
        state, m = setup.step_fn(state, dict(good, latents=good["latents"] * np.nan))
    assert int(state["nonfinite"]["halt_step"]) == 7
    assert int(state["nonfinite"]["skipped"]) == 5


def test_healthy_step_equals_the_unguarded_update(skip_setup):
    """On a finite batch the guarded step is the plain AdamW update and EMA."""
    setup = skip_setup
    c = setup.config
    state = setup.init_state()
    start = host(state)
    batch = t2i_batch()

    @jax.jit
    def reference(s, b):
        def loss_of(p):
            return setup.task.loss_fn(nnx.merge(setup.graphdef, p), b,
                                      jax.random.fold_in(jax.random.key(c.seed + 1), s["step"]))

        (_, _), g = jax.value_and_grad(loss_of, has_aux=True)(s["params"])
        updates, opt = setup.tx.update(g, s["opt_state"], s["params"])
        params = optax.apply_updates(s["params"], updates)
        d = c.train.ema_decay
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, s["ema"], params)
        return {"params": params, "opt_state": opt, "ema": ema}

    want = host(reference(state, batch))
    got, _ = setup.step_fn(state, batch)
    got = host(got)
    # Two programs compiled apart: XLA may sum a small dot in another order in each (a float32
    # ulp in a few weight-gradient entries), and the step's fused AdamW clips by multiplying with
    # clip / norm where optax divides first. So equal to float32 round-off: relatively, or, for a
    # parameter near 0, to 1e-8 absolute (a few ulps of an update lr · u, lr ≤ 1e-3 here), far
    # below an update.
    for key in ("params", "opt_state", "ema"):
        assert jax.tree.structure(got[key]) == jax.tree.structure(want[key])
        for x, y in zip(jax.tree.leaves(got[key]), jax.tree.leaves(want[key]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)
    assert not np.array_equal(got["params"]["embed"]["embedding"],
                              start["params"]["embed"]["embedding"])


# ------------------------------------------------------------------ injection for the trainer
class Poisoned:
    """The run's Task with a NaN injected at chosen (1-based) steps: ``"grad"`` a NaN gradient
    only (the loss stays finite: 0·√u at u = 0 in the backward pass), ``"loss"`` a NaN loss and
    first loss term. LM batches are marked by the iterator (``positions[0, 0] = -1``, counting
    batches from the run's start); σ-VAE batches carry their own ``step``."""

    def __init__(self, task, bad_steps, kind):
        self._task, self._bad, self._kind = task, tuple(bad_steps), kind

    def __getattr__(self, name):
        return getattr(self._task, name)

    def train_iterator(self, config, process_index, process_count):
        it = self._task.train_iterator(config, process_index, process_count)
        return it if config.task != "lm" else _Marking(it, self._bad)

    def loss_fn(self, model, batch, rng):
        loss, metrics = self._task.loss_fn(model, batch, rng)
        if "step" in batch:
            flag = jnp.isin(batch["step"][0] + 1, jnp.asarray(self._bad))
        else:
            flag = batch["positions"][0, 0] < 0
        if self._kind == "loss":
            nan = jnp.where(flag, jnp.nan, 0.0)
            first = next(iter(metrics))
            return loss + nan, dict(metrics, **{first: metrics[first] + nan})
        leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
        u = jnp.abs(jnp.sum(leaf)) * (1.0 - flag.astype(jnp.float32))
        return loss + 0.0 * jnp.sqrt(u), metrics


class _Marking:
    def __init__(self, it, bad):
        self._it, self._bad, self._n = it, bad, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self._n += 1
        if self._n in self._bad:
            batch = dict(batch, positions=np.array(batch["positions"]))
            batch["positions"][0, 0] = -1
        return batch

    def __getattr__(self, name):
        return getattr(self._it, name)


def poison(monkeypatch, bad_steps, kind):
    real = setup_lib.get_task
    monkeypatch.setattr(setup_lib, "get_task", lambda c: Poisoned(real(c), bad_steps, kind))


def checkpoint(workdir, step):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
    try:
        return host(mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore()))["state"])
    finally:
        mgr.close()


def saved_steps(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def lm_run(mode, steps, **train):
    c = tiny_lm_config()
    c.train.num_steps, c.train.nonfinite, c.train.ema_decay = steps, mode, 0.9
    c.checkpoint.every_steps, c.checkpoint.keep = 1, 20
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.mark.slow
def test_skip_leaves_state_bitwise_and_halts_after_max_in_a_row(tmp_path, monkeypatch):
    poison(monkeypatch, [2, 4, 5, 6], "grad")
    with pytest.raises(NonFiniteError) as e:
        train(lm_run("skip", 9, max_nonfinite=3), str(tmp_path), devices=ONE)
    msg = str(e.value)
    assert msg.startswith("3 steps in a row were not finite (train.max_nonfinite), the last at "
                          "step 6: the gradient")
    assert "4 skipped in all" in msg and "newest checkpoint is step 5" in msg
    assert saved_steps(tmp_path) == [1, 2, 3, 4, 5]
    s = {k: checkpoint(tmp_path, k) for k in (1, 2, 3, 5)}
    for key in ("params", "opt_state", "ema"):
        assert_same(s[2][key], s[1][key])  # step 2 skipped
        assert_same(s[5][key], s[3][key])  # steps 4, 5 skipped
    assert not np.array_equal(s[3]["params"]["embed"]["embedding"],
                              s[2]["params"]["embed"]["embedding"])
    for state in s.values():
        assert_finite(state)
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["nonfinite"] for r in rows] == [0, 1, 0, 1, 1, 1]
    assert [r["nonfinite_skipped"] for r in rows] == [0, 1, 1, 2, 3, 4]


@pytest.mark.slow
def test_vae_skip_resumes_bitwise(tmp_path, monkeypatch):
    """σ-VAE (the same trainer): a NaN loss at step 3 is skipped; resuming the straight run's
    step-2 checkpoint in another workdir ends bitwise equal to it, counters included."""
    poison(monkeypatch, [3], "loss")
    c = tiny_vae_run_config()
    c.train.nonfinite, c.train.ema_decay = "skip", 0.9
    c.checkpoint.every_steps, c.checkpoint.keep = 1, 10
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(c, str(straight), devices=ONE)
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    train(c, str(resumed), devices=ONE)
    a, b = checkpoint(straight, 6), checkpoint(resumed, 6)
    assert_same(a, b)
    assert_finite(a)
    assert int(a["nonfinite"]["skipped"]) == 1
    for key in ("params", "opt_state", "ema"):
        assert_same(checkpoint(straight, 3)[key], checkpoint(straight, 2)[key])
    for run in (straight, resumed):
        rows = {r["step"]: r for r in read_metrics(run) if "loss" in r}
        assert rows[3]["nonfinite"] == 1 and np.isnan(rows[3]["loss"])
        assert rows[6]["nonfinite_skipped"] == 1 and np.isfinite(rows[6]["loss"])


@pytest.mark.slow
def test_cli_halts_a_diverging_run_in_one_line(tmp_path):
    """Halt, end to end: lr = 1e30 overflows the backward pass at step 3 (no injection): exit 2,
    one line naming the step, the terms and the gradient, no traceback; nothing after step 2 is
    saved and its checkpoint is finite."""
    tiny = ["--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.mlp_dim=64",
            "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
            "--config.model.head_dim=8", "--config.data.seq_len=32"]
    r = subprocess.run(latentlm_command(
        "train", "--config", LM_TINY, "--workdir", str(tmp_path), "--config.train.num_steps=4",
        "--config.train.warmup_steps=1", "--config.train.learning_rate=1e30",
        "--config.checkpoint.every_steps=1", "--config.train.log_every=1",
        "--config.metrics.peak_tflops_per_device=1.0", *tiny),
        env=one_device_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("latentlm: error:")]
    assert len(errors) == 1 and errors[0].startswith("latentlm: error: step 3 is not finite: ")
    assert "the gradient" in errors[0] and "grad_norm=nan" in errors[0] and "ce=" in errors[0]
    assert "newest checkpoint is step 2" in errors[0]
    assert saved_steps(tmp_path) == [1, 2]  # step 3 never saved
    state = checkpoint(tmp_path, 2)
    assert int(state["step"]) == 2 and int(state["nonfinite"]["halt_step"]) == 0
    assert_finite(state)
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["nonfinite"] for r in rows] == [0, 0, 1]
    assert np.isfinite(rows[-1]["loss"]) and np.isnan(rows[-1]["grad_norm"])


@pytest.mark.parametrize("field,value", [("nonfinite", "sometimes"), ("nonfinite", ""),
                                         ("max_nonfinite", 0), ("max_nonfinite", -3)])
def test_bad_settings_are_one_line_errors(field, value):
    c = base_config()
    c.train[field] = value
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value).startswith(f"config.train.{field}: ") and "\n" not in str(e.value)
