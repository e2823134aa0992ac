"""``latentlm bench train``: the train step's speed, its FLOP rate, and where its time goes.

The step is the trainer's own program (``train/setup.build_setup``, lowered and compiled under
the activation rules, as ``train/trainer.py`` does), timed after warm-up steps with the compile
apart. Model FLOPs are the analytic count the trainer's MFU uses (``train/flops.py``); the peak is a
2048² matmul in the model's dtype measured in this process (or ``metrics.peak_tflops_per_device``
when set). The split times four parts of a step, each its own jitted function timed the same way:
the backbone's forward + backward (embedding, decoder, LM head and its cross-entropy), the
diffusion heads' forward + backward on a fixed hidden state, the optimizer update alone, and the
wait for data (the next batch from the pipeline; host → device transfer for ``synthetic``).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from latentlm_jax import host_malloc
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.parallel.logical import activation_rules
from latentlm_jax.train.flops import calibrate_peak_tflops, lm_flops_split
from latentlm_jax.train.optimizer import adamw_update

PEAK_SIZE = 2048  # the peak matmul is PEAK_SIZE² × PEAK_SIZE²
PEAK_REPEATS = 8  # best of this many


def time_calls(fn: Callable[[], Any], warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn`` (which blocks until its work is done), after
    ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": float(np.median(times)), "min_s": min(times), "max_s": max(times)}


def hidden_states(model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
    """The backbone's last hidden states (before the LM head) of a text LM or a LatentLM."""
    if hasattr(model, "hidden"):
        return model.hidden(batch)
    return model.decoder(model.embed(batch["tokens"]), batch["positions"], batch["segment_ids"])


def diffusion_terms(model: nnx.Module, batch: dict[str, jax.Array], hidden: jax.Array,
                    rng: jax.Array) -> jax.Array:
    """λ · the diffusion losses of every modality on ``hidden``: the head part of
    ``lm/loss.latentlm_loss`` (the same function computes it there)."""
    from latentlm_jax.lm.loss import diffusion_loss_terms

    terms, _ = diffusion_loss_terms(model, batch, hidden, rng)
    total = jnp.zeros((), jnp.float32)
    for term in terms:
        total = total + term
    return total


def measure_peak(config: mlc.ConfigDict) -> tuple[float, str]:
    """Peak TFLOP/s per device for MFU, and where it comes from."""
    if config.metrics.peak_tflops_per_device > 0:
        return float(config.metrics.peak_tflops_per_device), "config.metrics.peak_tflops_per_device"
    peak = calibrate_peak_tflops(config.model.dtype, size=PEAK_SIZE, repeats=PEAK_REPEATS)
    return peak, f"measured: {PEAK_SIZE}² {config.model.dtype} matmul, best of {PEAK_REPEATS}"


def _split_params(params: dict) -> tuple[dict, dict]:
    """(the diffusion heads' parameters, the rest)."""
    rest = {k: v for k, v in params.items() if k != "heads"}
    return params.get("heads", {}), rest


def bench_train(config: mlc.ConfigDict, *, steps: int = 5, warmup: int = 2,
                xla_flops: bool = True, profile_dir: str = "",
                profile_steps: int = 3) -> dict[str, Any]:
    """Compiles and times ``config``'s train step and its parts; returns every figure.
    ``profile_dir``: after the timed steps, traces ``profile_steps`` more into that local folder
    and adds their per-op summary as ``out["profile"]`` (latentlm_jax/bench/profile.py)."""
    from latentlm_jax.parallel.mesh import num_slices
    from latentlm_jax.parallel.mesh_check import check_mesh
    from latentlm_jax.train.setup import build_setup
    from latentlm_jax.train.trainer import to_global_batch

    if config.task != "lm":
        raise ConfigError("task", f"bench train times the language-model task (task='lm'), "
                                  f"got {config.task!r}")
    if steps < 1 or warmup < 0:
        raise ConfigError("", f"bench train needs --steps ≥ 1 and --warmup ≥ 0, got "
                              f"{steps} and {warmup}")
    if profile_dir and profile_steps < 1:
        raise ConfigError("", f"bench train --profile needs --profile-steps ≥ 1, got "
                              f"{profile_steps}")
    if "://" in profile_dir:
        raise ConfigError("", f"bench train --profile: jax.profiler writes local files, give a "
                              f"local folder (got {profile_dir})")
    devices = jax.devices()
    check_mesh(config, len(devices), num_slices(devices))
    peak, peak_source = measure_peak(config)
    setup = build_setup(config, devices)
    shardings, rules = setup.batch_shardings, config.sharding_rules
    synthetic = config.data.source == "synthetic"
    if synthetic:
        from latentlm_jax.data.synthetic import synthetic_batch

        host = synthetic_batch(config, jax.process_count())

        def next_host() -> dict[str, np.ndarray]:
            return host
    else:
        iterator = setup.task.train_iterator(config, jax.process_index(), jax.process_count())

        def next_host() -> dict[str, np.ndarray]:
            return next(iterator)

    def next_batch() -> dict[str, jax.Array]:
        return jax.block_until_ready(to_global_batch(next_host(), shardings))

    state = setup.init_state()
    batch = next_batch()
    t0 = time.perf_counter()
    with activation_rules(setup.mesh, rules):
        step = setup.step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0

    latents_seen: list[int] = []
    losses: list[float] = []

    def one_step() -> None:
        nonlocal state, batch
        if not synthetic:  # a fresh batch each step, fetched outside the timer
            batch = next_batch()
        if "latent_mask" in batch:
            latents_seen.append(int(batch["latent_mask"].sum()))
        before = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        step_times.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_SELF)
        # The kernel's share of the step (all threads): page faults on fresh memory show here
        step_system.append(after.ru_stime - before.ru_stime)
        step_faults.append(after.ru_minflt - before.ru_minflt)
        losses.append(float(metrics["loss"]))

    step_times: list[float] = []
    step_system: list[float] = []
    step_faults: list[int] = []
    for _ in range(warmup + steps):
        one_step()
    step_times = step_times[warmup:]
    step_system, step_faults = step_system[warmup:], step_faults[warmup:]
    latents_seen = latents_seen[warmup:]

    def traced_step() -> Any:  # untimed, unrecorded: the profiler's calls
        nonlocal state
        state, metrics = step(state, batch)
        return state, metrics

    profile = _profile(traced_step, step.as_text(), profile_dir, profile_steps,
                       peak) if profile_dir else None

    try:
        parts, parts_compile_s = _time_parts(setup, config, state, batch, next_batch, warmup,
                                             steps)
    finally:
        if not synthetic and hasattr(iterator, "close"):
            iterator.close()  # Grain worker processes, when data.num_workers > 0

    split = lm_flops_split(config)
    flops = sum(split.values())
    n_dev = len(devices)
    step_s = float(np.median(step_times))
    tokens = config.train.global_batch_size * config.data.seq_len
    latent_tokens = float(np.mean(latents_seen)) if latents_seen else 0.0
    tflops = flops / step_s / n_dev / 1e12
    out: dict[str, Any] = {
        "kind": "bench_train", "jax": jax.__version__, "platform": devices[0].platform,
        "host_malloc": host_malloc.describe(),
        "devices": n_dev, "processes": jax.process_count(),
        "dtype": config.model.dtype, "scan_layers": bool(config.model.scan_layers),
        "remat_policy": config.model.remat_policy, "attention": config.model.attention,
        "data_source": config.data.source, "batch": config.train.global_batch_size,
        "seq_len": config.data.seq_len, "params": setup.num_params,
        "compile_s": compile_s, "parts_compile_s": parts_compile_s,
        "warmup": warmup, "steps": steps, "step_times": step_times,
        "step_system_s": step_system, "step_page_faults": step_faults,
        **{f"step_{k}": v for k, v in summary(step_times).items()},
        "tokens_per_step": tokens, "latent_tokens_per_step": latent_tokens,
        "tokens_per_s": tokens / step_s, "latent_tokens_per_s": latent_tokens / step_s,
        "flops_per_step": flops, **{f"flops_{k}": v for k, v in split.items()},
        "recompute_flops_per_step": float(setup.task.recompute_flops_per_step(config)),
        "tflops_per_device": tflops, "peak_tflops_per_device": peak, "peak_source": peak_source,
        "mfu": tflops / peak, "losses": losses,
    }
    part_flops = {"backbone": split["backbone"] + split["attention"], "head": split["head"]}
    for name, times in parts.items():
        out[f"part_{name}_s"] = float(np.median(times))
        if name in part_flops:
            out[f"part_{name}_mfu"] = part_flops[name] / out[f"part_{name}_s"] / n_dev / 1e12 / peak
    if profile is not None:
        out["profile"] = profile
    if xla_flops:
        from latentlm_jax.bench.memory import hlo_flops

        out["xla_flops_per_step"] = hlo_flops(config)
    return out


def _profile(call: Callable[[], Any], hlo_text: str, out_dir: str, calls: int,
             peak_tflops: float) -> dict[str, Any]:
    """Traces ``calls`` train steps into ``out_dir`` and summarizes them per op; writes the
    compiled step's HLO, the call count (``write_profile_files``) and the summary
    (``profile_summary.json``) beside the trace."""
    import json

    from latentlm_jax import paths
    from latentlm_jax.bench.profile import profile_calls, summarize, write_profile_files

    trace, timings = profile_calls(call, calls, out_dir)
    write_profile_files(out_dir, hlo_text, calls, timings)
    summary = summarize(trace, hlo_text, calls, peak_flops=peak_tflops * 1e12, timings=timings)
    paths.write_text(paths.join(out_dir, "profile_summary.json"), json.dumps(summary, indent=1))
    return summary


def _time_parts(setup, config: mlc.ConfigDict, state: dict, batch: dict[str, jax.Array],
                next_batch: Callable[[], dict], warmup: int, steps: int
                ) -> tuple[dict[str, list[float]], float]:
    """Seconds per call of each part of a step (backbone, head, optimizer, data), and the time
    their compiles took. The optimizer part donates ``state``'s parameters and moments."""
    graphdef, rules = setup.graphdef, config.sharding_rules
    params = state["params"]
    heads, rest = _split_params(params)
    key = jax.random.key(config.seed + 1)
    spec = setup.batch_shardings["tokens"].spec
    act_sharding = NamedSharding(setup.mesh, PartitionSpec(*spec, None))
    rng = np.random.default_rng(1)
    shape = (config.train.global_batch_size, config.data.seq_len, config.model.emb_dim)
    weight = jax.device_put(rng.standard_normal(shape).astype(np.float32), act_sharding)

    def backbone_loss(rest, heads, batch, weight):
        from latentlm_jax.lm.cross_entropy import masked_cross_entropy

        model = nnx.merge(graphdef, {**rest, **({"heads": heads} if heads else {})})
        hidden = hidden_states(model, batch)
        ce, _ = masked_cross_entropy(model.logits(hidden), batch["targets"], batch["ce_mask"])
        return ce + jnp.mean(hidden.astype(jnp.float32) * weight)

    def head_loss(heads, rest, batch, hidden):
        model = nnx.merge(graphdef, {**rest, "heads": heads})
        return diffusion_terms(model, batch, hidden, key)

    def hidden_fn(params, batch):
        return hidden_states(nnx.merge(graphdef, params), batch)

    def optimizer(params, opt_state, grads):  # as the step runs it: the norm, then the guard
        grad_norm = optax.global_norm(grads)
        return adamw_update(config.train, grads, opt_state, params, grad_norm,
                            jnp.isfinite(grad_norm))

    t0 = time.perf_counter()
    with activation_rules(setup.mesh, rules):
        backbone = jax.jit(jax.value_and_grad(backbone_loss)).lower(
            rest, heads, batch, weight).compile()
        if heads:
            hidden = jax.block_until_ready(jax.jit(hidden_fn)(params, batch))
            head = jax.jit(jax.value_and_grad(head_loss)).lower(
                heads, rest, batch, hidden).compile()
        grads = jax.block_until_ready(jax.jit(lambda p: jax.tree.map(
            lambda x: x * 1e-3, p))(params))
        opt = jax.jit(optimizer, donate_argnums=(0, 1)).lower(
            params, state["opt_state"], grads).compile()
    compile_s = time.perf_counter() - t0

    times = {"backbone": time_calls(
        lambda: jax.block_until_ready(backbone(rest, heads, batch, weight)), warmup, steps)}
    if heads:
        times["head"] = time_calls(
            lambda: jax.block_until_ready(head(heads, rest, batch, hidden)), warmup, steps)
    times["data"] = time_calls(next_batch, warmup, steps)
    opt_state = {"params": params, "opt_state": state["opt_state"]}

    def opt_step() -> None:
        p, o = opt(opt_state["params"], opt_state["opt_state"], grads)
        opt_state["params"], opt_state["opt_state"] = jax.block_until_ready((p, o))

    times["optimizer"] = time_calls(opt_step, warmup, steps)
    return times, compile_s


def kernel_time_line(out: dict[str, Any]) -> str:
    """The kernel's (system) seconds and minor page faults per timed step, with the steps they
    slowed: a step that maps fresh memory pays for it here, not in the program (docs/
    benchmarks.md, profile findings 14 and 19)."""
    system, faults, times = out["step_system_s"], out["step_page_faults"], out["step_times"]
    slow = [i for i, t in enumerate(times) if t > 1.5 * out["step_median_s"]]
    line = (f"  kernel time         median {float(np.median(system)):.4f} s   max "
            f"{max(system):.4f} s per step; page faults max {max(faults):,}")
    if slow:
        line += (f"; {len(slow)} step{'s' if len(slow) > 1 else ''} over 1.5× the median: "
                 + ", ".join(f"{times[i]:.2f} s ({system[i]:.2f} s kernel, {faults[i]:,} faults)"
                             for i in slow))
    return line


def report_lines(out: dict[str, Any], config: mlc.ConfigDict) -> list[str]:
    """The console report of :func:`bench_train`'s figures."""
    m = config.model
    g = 1e9
    head = (f", head depth {m.head.depth} × {m.head.width or m.emb_dim}, "
            f"K={m.diffusion.batch_mul}" if out["flops_head"] else "")
    lines = [
        f"model: {m.num_layers} layers × {m.emb_dim}{head}; {out['params'] / 1e6:.2f}M params; "
        f"{out['dtype']}, scan_layers={out['scan_layers']}, remat={out['remat_policy']}, "
        f"attention={out['attention']}",
        f"devices: {out['devices']} × {out['platform']} (jax {out['jax']}); batch "
        f"{out['batch']} × {out['seq_len']} ({out['tokens_per_step']:,} tokens, "
        f"{out['latent_tokens_per_step']:,.0f} latent targets); data.source={out['data_source']}"
        f"; host malloc {out['host_malloc']}",
        f"compile: step {out['compile_s']:.1f} s, parts {out['parts_compile_s']:.1f} s "
        f"(not in the timings)",
        f"timed: {out['steps']} steps after {out['warmup']} warm-up",
        f"  step time           median {out['step_median_s']:.4f} s   min "
        f"{out['step_min_s']:.4f} s   max {out['step_max_s']:.4f} s",
        kernel_time_line(out),
        f"  tokens/s            {out['tokens_per_s']:,.1f}"
        + (f"   (latent tokens/s {out['latent_tokens_per_s']:,.1f})"
           if out["latent_tokens_per_step"] else ""),
        f"  model FLOPs/step    {out['flops_per_step'] / g:,.2f} G = backbone "
        f"{out['flops_backbone'] / g:,.2f} + attention {out['flops_attention'] / g:,.2f} + head "
        f"{out['flops_head'] / g:,.2f} (analytic, train/flops.py)",
    ]
    if "xla_flops_per_step" in out:
        xla = out["xla_flops_per_step"]
        ratio = f"{xla / out['flops_per_step']:.3f}" if out["flops_per_step"] else "n/a"
        lines.append(f"  XLA cost analysis   {xla / g:,.2f} G (all ops, layers unrolled; "
                     f"XLA / analytic {ratio})")
    lines += [
        f"  TFLOP/s per device  {out['tflops_per_device']:.4f}",
        f"  matmul peak         {out['peak_tflops_per_device']:.4f} TFLOP/s per device "
        f"({out['peak_source']})",
        f"  MFU                 {out['mfu']:.1%}",
        "split (each part its own jitted function, median):",
        f"  backbone fwd+bwd    {out['part_backbone_s']:.4f} s   MFU "
        f"{out['part_backbone_mfu']:.1%}  (embedding, decoder, LM head; "
        f"{(out['flops_backbone'] + out['flops_attention']) / g:,.2f} G)",
    ]
    if "part_head_s" in out:
        lines.append(f"  diffusion head      {out['part_head_s']:.4f} s   MFU "
                     f"{out['part_head_mfu']:.1%}  (fwd+bwd on a fixed hidden state; "
                     f"{out['flops_head'] / g:,.2f} G)")
    wait = "host → device transfer" if out["data_source"] == "synthetic" else "next batch"
    parts = sum(v for k, v in out.items() if k.startswith("part_") and k.endswith("_s"))
    lines += [
        f"  optimizer update    {out['part_optimizer_s']:.4f} s",
        f"  data wait           {out['part_data_s']:.4f} s   ({wait})",
        f"  sum of parts        {parts:.4f} s   (step {out['step_median_s']:.4f} s)",
        f"losses: {' '.join(f'{x:.4f}' for x in out['losses'])}",
    ]
    return lines
