"""``latentlm bench KIND ...``: benchmarks that print figures (recorded in docs/benchmarks.md)."""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    mem = kinds.add_parser("memory", help="compile the train step for a TPU topology (needs "
                                          "libtpu: pip install -e '.[tpu]') and print per-device "
                                          "memory")
    add_config_argument(mem)
    mem.add_argument("--topology", required=True, help='TPU topology, e.g. "v5p:2x4x4"')

    data = kinds.add_parser("data", help="input pipeline throughput per source vs the train step")
    add_config_argument(data)
    data.add_argument("--sources", default="",
                      help="comma-separated data.source values to measure (default: the "
                           "config's own)")
    data.add_argument("--batches", type=int, default=50, help="batches timed per source")
    data.add_argument("--skip-train-step", action="store_true",
                      help="do not time the train step for comparison")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    quiet_logs()
    if args.kind == "data":
        return _bench_data(config, args)
    if args.kind == "memory":
        from latentlm_jax.bench.memory import compile_for_topology

        try:
            import libtpu  # noqa: F401
        except ImportError:
            print("latentlm: error: bench memory needs libtpu: pip install -e '.[tpu]'")
            return 2
        out = compile_for_topology(config, args.topology)
        print(f"topology {args.topology}: {int(out['devices'])} devices, "
              f"{out['params_billion']:.3f}B parameters")
        for key in ("argument_gib", "output_gib", "alias_gib", "temp_gib", "generated_code_gib",
                    "peak_gib", "hbm_gib"):
            if key in out:
                print(f"  {key[:-4]:>15}: {out[key]:8.2f} GiB per device")
        if "fits" in out:
            print("  fits in HBM" if out["fits"] else "  DOES NOT FIT in HBM")
    return 0


def _bench_data(config, args: argparse.Namespace) -> int:
    import ml_collections as mlc

    from latentlm_jax.bench import data as bench

    sources = [s for s in args.sources.split(",") if s] or [config.data.source]
    print(f"data pipeline: seq_len={config.data.seq_len} "
          f"batch={config.train.global_batch_size} workers={config.data.num_workers}")
    print(f"{'source':<24}{'raw examples/s':>16}{'documents/s':>14}{'tokens/s':>14}")
    rates = {}
    for name in sources:
        c = mlc.ConfigDict(config.to_dict())
        c.data.source = name
        raw = bench.raw_source_rate(c)
        pipe = bench.pipeline_rate(c, num_batches=args.batches)
        rates[name] = pipe["tokens_per_sec"]
        print(f"{name:<24}{raw:>16,.0f}{pipe['documents_per_sec']:>14,.0f}"
              f"{pipe['tokens_per_sec']:>14,.0f}")
    if not args.skip_train_step:
        step = bench.train_step_rate(config)
        print(f"train step consumes {step:,.0f} tokens/s "
              f"({config.model.num_layers} layers × {config.model.emb_dim})")
        for name, rate in rates.items():
            print(f"  {name}: pipeline / step = {rate / step:.1f}×")
    return 0
