"""``latentlm export --workdir W --out DIR``: a trained run → a self-contained directory for
inference: the weights alone (EMA by default when kept; ``--dtype bfloat16`` halves them), the
config, and what decoding needs (tokenizer, σ-VAEs, latent statistics). ``generate``, ``eval``,
``encode`` and ``reconstruct`` take DIR as their ``--workdir``. See docs/export.md.

    latentlm export --workdir runs/lm --out exports/lm --dtype bfloat16
    latentlm export --workdir runs/vae_image --step 2000 --no-ema --out exports/vae_image
"""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import quiet_logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True,
                        help="a training run's workdir (LatentLM, text LM or σ-VAE)")
    parser.add_argument("--out", required=True, help="the export directory (new or empty)")
    parser.add_argument("--step", type=int, default=None,
                        help="the checkpoint to export (default: the latest)")
    ema = parser.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="use_ema", action="store_const", const=None, default=True,
                     help="the EMA weights; an error when the run kept none (default: the EMA "
                          "weights when kept, else the raw ones)")
    ema.add_argument("--no-ema", dest="use_ema", action="store_const", const=False,
                     help="the raw weights")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="dtype of the exported weights (default: as the run stores them)")


def run(args: argparse.Namespace) -> int:
    from latentlm_jax.cli.common import check_out_dir
    from latentlm_jax.config.loading import ConfigError

    if args.step is not None and args.step < 0:
        raise ConfigError("", f"--step must be ≥ 0 (a checkpoint's step), got {args.step}")
    check_out_dir(args.out)
    quiet_logs()
    from latentlm_jax.train.export import export_run

    e = export_run(args.workdir, args.out, step=args.step, use_ema=args.use_ema,
                   dtype=args.dtype)
    extra = "".join(f"; {p}" for p in e.parts)
    print(f"exported step {e.step} of {args.workdir} ({e.weights} weights, "
          f"{e.num_params / 1e6:.2f}M parameters in {e.dtype}, {e.bytes / 2**20:.1f} MiB) to "
          f"{e.out}{extra}")
    return 0
