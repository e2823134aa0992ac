"""``latentlm sweep --config configs/sweeps/X.py --workdir W [--print-commands | --collect]``

Trains every point of a sweep file in turn (each a resumable ``latentlm train`` workdir under
``W/points/<name>/``; finished points are skipped), then writes ``W/sweep.csv``, the power-law
fits (printed and in ``W/sweep_fit.json``) and ``W/sweep_loss_vs_flops.png``. ``--print-commands``
prints one ``latentlm train`` line per point and does nothing else; ``--collect`` only gathers
the results of points run elsewhere (docs/sweeps.md). ``--config.a.b=value`` overrides fields of
the sweep file.
"""

from __future__ import annotations

import argparse
import sys

from latentlm_jax.cli.common import quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="sweep file (configs/sweeps/X.py): a base config and its points")
    parser.add_argument("--workdir", required=True,
                        help="the sweep's directory: points/<name>/ (one training workdir per "
                             "point), sweep.csv, sweep_fit.json, sweep_loss_vs_flops.png")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print one `latentlm train` command per point and exit (run them on "
                           "a cluster, then --collect)")
    mode.add_argument("--collect", action="store_true",
                      help="run nothing: gather the points' results, fit and plot")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    from latentlm_jax.sweep.points import expand_points, load_sweep

    sweep = load_sweep(args.config, getattr(args, "config_overrides", []))
    points = expand_points(sweep)
    if args.print_commands:
        from latentlm_jax.sweep.runner import print_commands

        print_commands(points, args.workdir)
        return 0
    from latentlm_jax.sweep.runner import Plan, report, run_points

    plan = Plan.build(points)
    failed = [] if args.collect else run_points(plan, args.workdir, sweep)
    report(plan, args.workdir, sweep)
    if failed:
        print(f"latentlm sweep: {len(failed)} point(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
