"""``latentlm encode --vae-workdir W --out DIR``: a dataset → normalised latents (ArrayRecord)."""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError, apply_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae-workdir", required=True, help="workdir of a trained σ-VAE run")
    parser.add_argument("--out", required=True, help="output directory for the latent shards")
    parser.add_argument("--num-examples", type=int, default=20_000,
                        help="examples of the split to encode (default 20000)")
    parser.add_argument("--split", default="train", help="dataset split (default train)")
    parser.add_argument("--batch-size", type=int, default=128)


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    from latentlm_jax.data.encode_latents import MODALITY_KEYS, encode_dataset
    from latentlm_jax.data.shapes_tones import ShapesTones
    from latentlm_jax.train.checkpoint_io import load_model, load_run_config
    from latentlm_jax.train.metrics import format_duration

    config = load_run_config(args.vae_workdir)
    apply_overrides(config, getattr(args, "config_overrides", []))
    if config.task not in MODALITY_KEYS:
        raise ConfigError("task", f"{args.vae_workdir} is a {config.task!r} run, not a σ-VAE")
    if args.num_examples <= 0:
        raise ConfigError("", f"--num-examples must be positive, got {args.num_examples}")
    model, config, step = load_model(args.vae_workdir, config=config)
    dataset = ShapesTones(split=args.split, seed=config.data.seed)

    def progress(done: int, total: int, seconds: float) -> None:
        eta = seconds / max(done, 1) * (total - done)
        print(f"\rencoding {done}/{total} ({done / seconds:,.0f}/s, ETA {format_duration(eta)})",
              end="" if done < total else "\n", flush=True)

    stats = encode_dataset(model, config.task, dataset, args.out, num_examples=args.num_examples,
                           batch_size=args.batch_size, seed=config.seed, progress=progress)
    print(f"wrote {stats['num_examples']} {stats['modality']} latent sequences of "
          f"{stats['sequence_length']} × {stats['latent_dim']} (checkpoint step {step}) to "
          f"{args.out}")
    return 0
