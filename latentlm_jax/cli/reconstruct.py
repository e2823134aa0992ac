"""``latentlm reconstruct --workdir W [--config C] --out DIR``: a σ-VAE's reconstructions as files.

    latentlm reconstruct --workdir runs/my_vae --out recon/ --examples 8 \\
        --config.data.source=manifest --config.data.manifest=held_out.jsonl

Writes ``<index>_original.png`` (the image as the σ-VAE sees it: scaled and centre-cropped) and
``<index>_recon.png`` — ``.wav`` for audio — for the first ``--examples`` usable examples; the
index is the example's position in its source (the manifest's n-th example, 0-based). The data is
chosen as for ``latentlm eval`` (``cli/vae_data.py``).
"""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.cli.vae_data import add_data_arguments
from latentlm_jax.config.loading import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a vae_image / vae_audio run directory")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="directory for the files")
    parser.add_argument("--examples", type=int, default=16,
                        help="examples to reconstruct: the first usable ones (default 16)")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    if args.examples <= 0:
        raise ConfigError("", f"--examples must be positive, got {args.examples}")
    from latentlm_jax.cli.common import check_out_dir

    check_out_dir(args.out)
    from latentlm_jax.cli.vae_data import data_config, load_examples, load_vae_run_config
    from latentlm_jax.data.bad_input import BadInputPolicy, print_skip_summary
    from latentlm_jax.train.checkpoint_io import load_model
    from latentlm_jax.vae.evaluation import reconstruct_examples, write_pairs
    from latentlm_jax.vae.sources import modality_of

    run_config = load_vae_run_config(args.workdir)
    config = data_config(args, run_config)
    policy = BadInputPolicy(config.data.bad_input)
    examples, builtin, name = load_examples(run_config, config, args.examples, policy)
    model, run_config, step = load_model(args.workdir, config=run_config,
                                         use_ema=not args.no_ema)
    modality = modality_of(run_config.task)
    rec = reconstruct_examples(model, modality, examples, builtin)
    paths = write_pairs(args.out, rec, run_config.vae.audio.sample_rate)
    figures = " ".join(f"{k}={v:.4g}" for k, v in rec.metrics.items())
    ext = "png" if modality == "image" else "wav"
    print(f"wrote {len(examples)} {modality} reconstructions of {name} (step {step}; {figures}) "
          f"to {args.out}: <index>_original.{ext}, <index>_recon.{ext} "
          f"({len(paths)} files)")
    print_skip_summary(policy.counts())
    return 0
