"""``latentlm profile DIR``: where the traced train steps' time went, per op and per matmul shape.

    latentlm train --config C --workdir RUN --config.train.profile_start_step=20
    latentlm profile RUN/profile

DIR is a folder a training run (``train.profile_start_step``) or ``latentlm bench train
--profile DIR`` wrote: a ``jax.profiler`` trace, the compiled step's HLO and the number of traced
steps. The report is ``latentlm_jax/bench/profile.py``'s; docs/benchmarks.md ("Where a step's
time goes") explains its rows.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="a profile folder (RUN/profile, or bench train --profile's)")
    parser.add_argument("--top", type=int, default=12, help="rows per table")


def run(args: argparse.Namespace) -> int:
    from latentlm_jax.bench.profile import summarize_dir, summary_lines
    from latentlm_jax.config.loading import ConfigError

    if args.top < 1:
        raise ConfigError("", f"profile needs --top ≥ 1, got {args.top}")
    try:
        summary = summarize_dir(args.dir, top=args.top)
    except FileNotFoundError as e:
        raise ConfigError("", str(e)) from None
    for line in summary_lines(summary, top=args.top):
        print(line)
    print(f"  trace: {summary['trace_file']}")
    return 0
