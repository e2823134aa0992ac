"""``latentlm bench KIND ...``: benchmarks that print figures (recorded in docs/benchmarks.md)."""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    mem = kinds.add_parser("memory", help="compile the train step for a TPU topology (needs "
                                          "libtpu: pip install -e '.[tpu]') and print per-device "
                                          "memory, FLOPs per step and whether it fits")
    add_config_argument(mem)
    mem.add_argument("--topology", default="",
                     help='TPU topology of one slice, e.g. "v5p:2x4x4" (default: the config\'s '
                          "target_topology)")
    mem.add_argument("--slices", type=int, default=0,
                     help="slices of that topology joined by DCN (default: the config's "
                          "target_slices); the config's mesh.dcn must cover them")
    family = mem.add_mutually_exclusive_group()
    family.add_argument("--all", action="store_true",
                        help="prove every size of the config file's SIZES table "
                             "(configs/latentlm.py) and print one table")
    family.add_argument("--sizes", default="",
                        help="comma-separated config arguments to prove, e.g. base,medium")

    gen = kinds.add_parser("generate", help="generation speed of a LatentLM: one span of N "
                                            "latents split into backbone-only decode and "
                                            "diffusion-head solver time, decode cost at "
                                            "positions 64 and 512")
    gen.add_argument("--workdir", default="", help="a trained LatentLM run")
    add_config_argument(gen, required=False)
    gen.add_argument("--batch", type=int, default=8)
    gen.add_argument("--steps", type=int, default=20, help="solver steps per latent")
    gen.add_argument("--cfg-scale", type=float, default=3.0)
    gen.add_argument("--span", type=int, default=0,
                     help="latents per generated span (default: the config's image latent grid)")
    gen.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best kept)")

    train = kinds.add_parser("train", help="train step time, tokens/s, TFLOP/s and MFU against "
                                           "a matmul peak measured here; the split of a step "
                                           "(backbone, diffusion head, optimizer, data)")
    add_config_argument(train)
    train.add_argument("--steps", type=int, default=5, help="timed steps (and calls per part)")
    train.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    train.add_argument("--json", default="", help="append one JSON line with every figure here")
    train.add_argument("--profile", default="", metavar="DIR",
                       help="after the timed steps, trace more steps into this local folder "
                            "(jax.profiler: TensorBoard/Perfetto) and print where their time "
                            "went, per op and per matmul shape")
    train.add_argument("--profile-steps", type=int, default=3, help="steps traced by --profile")
    train.add_argument("--no-xla-flops", action="store_true",
                       help="skip XLA's cost analysis of the step (one more lowering)")

    data = kinds.add_parser("data", help="input pipeline throughput per source vs the train step")
    add_config_argument(data)
    data.add_argument("--sources", default="",
                      help="comma-separated data.source values to measure (default: the "
                           "config's own)")
    data.add_argument("--batches", type=int, default=50, help="batches timed per source")
    data.add_argument("--skip-train-step", action="store_true",
                      help="do not time the train step for comparison")


def run(args: argparse.Namespace) -> int:
    if args.kind == "generate":
        quiet_logs()
        return _bench_generate(args)
    config = load_config(args)
    quiet_logs()
    if args.kind == "data":
        _check_real_data(config)
        return _bench_data(config, args)
    if args.kind == "memory":
        from latentlm_jax.cli.bench_memory import run_memory

        return run_memory(config, args)
    if args.kind == "train":
        return _bench_train(config, args)
    return 0


def _check_real_data(config) -> None:
    """As ``train`` does: dims etc. from data.latents_dir, and the input files exist (a missing
    manifest or latent shard is one line, before any timing)."""
    from latentlm_jax.cli.train import check_input_files
    from latentlm_jax.data.latents_dir import resolve_latents_dir

    resolve_latents_dir(config)
    check_input_files(config)


def _bench_train(config, args: argparse.Namespace) -> int:
    import json

    from latentlm_jax import paths
    from latentlm_jax.bench.train import bench_train, report_lines

    if config.data.source != "synthetic":
        _check_real_data(config)
    out = bench_train(config, steps=args.steps, warmup=args.warmup,
                      xla_flops=not args.no_xla_flops, profile_dir=args.profile,
                      profile_steps=args.profile_steps)
    print(f"bench train: {args.config} {' '.join(args.config_overrides)}".rstrip())
    for line in report_lines(out, config):
        print(line)
    if "profile" in out:
        from latentlm_jax.bench.profile import summary_lines

        for line in summary_lines(out["profile"]):
            print(line)
        print(f"  trace, HLO and summary in {args.profile} (TensorBoard: tensorboard --logdir "
              f"{args.profile}; Perfetto: {out['profile']['trace_file']})")
    if args.json:
        out.update(config=args.config, overrides=list(args.config_overrides))
        with paths.open_file(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    return 0


def _bench_data(config, args: argparse.Namespace) -> int:
    import ml_collections as mlc

    from latentlm_jax.bench import data as bench
    from latentlm_jax.data.bad_input import SkipTotals, print_skip_summary

    skipped = SkipTotals()  # bad examples, by data.bad_input
    sources = [s for s in args.sources.split(",") if s] or [config.data.source]
    print(f"data pipeline: seq_len={config.data.seq_len} "
          f"batch={config.train.global_batch_size} workers={config.data.num_workers}")
    print(f"{'source':<24}{'raw examples/s':>16}{'documents/s':>14}{'tokens/s':>14}")
    rates = {}
    for name in sources:
        c = mlc.ConfigDict(config.to_dict())
        c.data.source = name
        raw = bench.raw_source_rate(c, skipped=skipped)
        pipe = bench.pipeline_rate(c, num_batches=args.batches, skipped=skipped)
        rates[name] = pipe["tokens_per_sec"]
        print(f"{name:<24}{raw:>16,.0f}{pipe['documents_per_sec']:>14,.0f}"
              f"{pipe['tokens_per_sec']:>14,.0f}")
    if not args.skip_train_step:
        step = bench.train_step_rate(config)
        print(f"train step consumes {step:,.0f} tokens/s "
              f"({config.model.num_layers} layers × {config.model.emb_dim})")
        for name, rate in rates.items():
            print(f"  {name}: pipeline / step = {rate / step:.1f}×")
    print_skip_summary(skipped.as_metrics())
    return 0


def _bench_generate(args: argparse.Namespace) -> int:
    from flax import nnx

    from latentlm_jax.bench.generate import run_all
    from latentlm_jax.config.loading import ConfigError
    from latentlm_jax.data.tokenizer import make_tokenizer
    from latentlm_jax.generate.generator import SamplingOptions

    for flag in ("batch", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise ConfigError("", f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.span < 0:
        raise ConfigError("", f"--span must be at least 1 (0 = the image grid), got {args.span}")
    if args.workdir:
        from latentlm_jax.train.checkpoint_io import load_model

        model, config, _ = load_model(args.workdir)
        source = args.workdir
    elif args.config:
        from latentlm_jax.models.latentlm import LatentLM

        config = load_config(args)
        model = LatentLM(config.model, rngs=nnx.Rngs(0))
        source = f"{args.config} (random weights: speed does not depend on them)"
    else:
        raise ConfigError("", "bench generate needs --workdir (a trained run) or --config")
    if not hasattr(model, "heads") or not model.dims:
        raise ConfigError("", "bench generate needs a LatentLM with a latent modality")
    from latentlm_jax.vae.config import image_latent_shape

    h, w, _ = image_latent_shape(config.vae)
    opts = SamplingOptions(steps=args.steps, cfg_scale=args.cfg_scale,
                           max_audio_latents=args.span or SamplingOptions.max_audio_latents)
    out = run_all(model, config.model, make_tokenizer(config.data), batch=args.batch,
                  image_latents=args.span or h * w, opts=opts, repeats=args.repeats)
    m = config.model
    n, ms = int(out["latents"]), 1e3
    print(f"model: {source}: {m.num_layers} layers × {m.emb_dim} ({m.num_heads} heads, mlp "
          f"{m.mlp_dim}), head depth {m.head.depth} width {m.head.width or m.emb_dim}; "
          f"{m.dtype}")
    print(f"span of {n} latents, batch {args.batch} ({int(out['rows'])} rows with the CFG "
          f"twins), {opts.method} {opts.steps} steps, cfg {opts.cfg_scale}")
    print(f"  total per span:                 {ms * out['total']:10.1f} ms "
          f"({out['latent_tokens_per_sec']:.1f} latent tokens/s)")
    print(f"  backbone-only decode of span:   {ms * out['backbone']:10.1f} ms "
          f"({n} cached steps, no head)")
    print(f"  head (solver) per span:         {ms * out['head']:10.1f} ms "
          f"({ms * out['head'] / n:.2f} ms per latent)")
    print(f"  total / backbone-only:          {out['ratio']:10.2f}")
    for key, value in out.items():
        if key.startswith("decode_ms_at_"):
            print(f"  decode step at position {key.rsplit('_', 1)[1]:>4}:  {value:10.2f} ms")
    return 0
