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


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    quiet_logs()
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
