"""``latentlm bench memory``: prove that a config (or a family of them) fits its TPU topology.

One config prints its per-device memory, FLOPs and verdict; ``--all`` / ``--sizes`` compile each
member of a config family (``configs/latentlm.py:<size>``) in turn and print one table.
"""

from __future__ import annotations

import argparse
import math
import sys

import ml_collections as mlc

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError, apply_overrides, load_config_file
from latentlm_jax.config.validate import validate


def _libtpu_missing() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return True
    return False


def _verdict(out: dict) -> str:
    if "fits" not in out:
        return "no HBM figure for this chip"
    if out["fits"]:
        return f"fits: {out['peak_gib']:.2f} of {out['hbm_gib']:.2f} GiB per device"
    why = " (XLA's TPU compiler ran out of HBM)" if out.get("refused_by_xla") else ""
    return (f"does not fit: needs {out['peak_gib']:.2f} GiB of {out['hbm_gib']:.2f} GiB per "
            f"device{why}")


def _where(out: dict) -> str:
    slices = f"{out['slices']} slices of " if out["slices"] > 1 else ""
    mesh = " ".join(f"{a}={s}" for a, s in out["mesh"].items())
    return f"{slices}{out['topology']}: {out['devices']} devices, mesh {mesh}"


def print_one(config: mlc.ConfigDict, out: dict) -> None:
    print(f"{config.name} on {_where(out)}, {out['params_billion']:.3f}B parameters")
    for key in ("argument", "output", "alias", "temp", "generated_code", "peak", "hbm"):
        if f"{key}_gib" in out:
            print(f"  {key:>15}: {out[f'{key}_gib']:8.2f} GiB per device")
    analytic = out["analytic_flops"] + out["recompute_flops"]
    print(f"  FLOPs per step, XLA:      {out['xla_flops']:.4g} (cost analysis of the step's HLO, "
          "layers unrolled)")
    print(f"  FLOPs per step, analytic: {out['analytic_flops']:.4g} model (MFU) + "
          f"{out['recompute_flops']:.4g} remat recompute = {analytic:.4g}")
    print(f"  XLA / analytic:           {out['xla_flops'] / analytic:.3f}")
    if "tpu_cost_flops" in out:
        print(f"  TPU executable's cost analysis: {out['tpu_cost_flops']:.4g} (an undercount: "
              "it counts a loop body, e.g. the layer scan, once)")
    print(f"  {_verdict(out)}  (compiled in {out['compile_s']:.0f} s)")


_HEADER = (f"{'size':<8}{'layers×width':>13}{'params':>8}  {'topology':<16}{'chips':>6}"
           f"{'rows×len':>12}{'peak GiB':>10}{'HBM GiB':>9}  {'fits':<13}{'XLA PF':>12}"
           f"{'analytic PF':>12}{'ratio':>7}{'compile s':>10}")


def _pflop(flops: float) -> str:
    p = flops / 1e15
    return f"{p:,.0f}" if p >= 1000 else f"{p:.3g}"


def table_row(size: str, config: mlc.ConfigDict, out: dict) -> str:
    m = config.model
    where = (f"{out['slices']}×" if out["slices"] > 1 else "") + out["topology"]
    analytic = out["analytic_flops"] + out["recompute_flops"]
    xla = out["xla_flops"]
    fits = "yes" if out.get("fits") else ("does not fit" if "fits" in out else "?")
    rows = f"{config.train.global_batch_size}×{config.data.seq_len}"
    return (f"{size:<8}{f'{m.num_layers}×{m.emb_dim}':>13}{out['params_billion']:>7.2f}B  "
            f"{where:<16}{out['devices']:>6}{rows:>12}{out['peak_gib']:>10.2f}"
            f"{out.get('hbm_gib', math.nan):>9.2f}  {fits:<13}{_pflop(xla):>12}"
            f"{_pflop(analytic):>12}{xla / analytic:>7.3f}{out['compile_s']:>10.0f}")


def family_configs(args: argparse.Namespace) -> list[tuple[str, mlc.ConfigDict]]:
    from latentlm_jax.bench.memory import config_family

    path = args.config.partition(":")[0]
    sizes = [s for s in args.sizes.split(",") if s] if args.sizes else config_family(path)
    out = []
    for size in sizes:
        config = load_config_file(f"{path}:{size}")
        apply_overrides(config, getattr(args, "config_overrides", []))
        validate(config)
        out.append((size, config))
    return out


def run_memory(config: mlc.ConfigDict, args: argparse.Namespace) -> int:
    if _libtpu_missing():
        print("latentlm: error: bench memory needs libtpu: pip install -e '.[tpu]'",
              file=sys.stderr)
        return 2
    quiet_logs()
    from latentlm_jax.bench.memory import compile_for_topology

    if not (args.all or args.sizes):
        print_one(config, compile_for_topology(config, args.topology, args.slices))
        return 0
    members = family_configs(args)
    print("FLOPs of one train step over the global batch, in PFLOP: XLA's cost analysis of the "
          "step's HLO (layers unrolled) and the analytic count (model FLOPs for MFU + remat "
          "recompute)")
    print(_HEADER, flush=True)
    failed = 0
    for size, member in members:
        try:
            out = compile_for_topology(member, args.topology, args.slices)
        except Exception as e:  # one member's failure is its row, not the end of the table
            if getattr(args, "debug", False):
                raise
            text = " ".join(str(e).split())[:300]
            kind = "" if isinstance(e, ConfigError) else f"{type(e).__name__}: "
            print(f"{size:<8}error: {kind}{text}", flush=True)
            failed += 1
            continue
        print(table_row(size, member, out), flush=True)
    return 1 if failed else 0
