"""``latentlm encode --vae-workdir W [--config C] --out DIR``: a dataset → normalised latents.

Without ``--config`` the dataset is the built-in one (the σ-VAE run's ``data.seed``); with it,
whatever that config's ``data.source`` names: ``shapes_tones``, ``manifest`` (your own image /
audio files with captions) or ``tfds``. Examples without the σ-VAE's modality, or unusable ones,
are skipped and counted.
"""

from __future__ import annotations

import argparse

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError, apply_overrides

MEDIA_SOURCES = ("shapes_tones", "manifest", "tfds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae-workdir", required=True, help="workdir of a trained σ-VAE run")
    parser.add_argument("--config", default=None,
                        help="config whose data section names the dataset (data.source "
                             "shapes_tones | manifest | tfds); default: the built-in data")
    parser.add_argument("--out", required=True, help="output directory for the latent shards")
    parser.add_argument("--num-examples", type=int, default=20_000,
                        help="examples of the split to encode (default 20000)")
    parser.add_argument("--split", default="train", help="dataset split (default train)")
    parser.add_argument("--batch-size", type=int, default=128)


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    from latentlm_jax.data.encode_latents import MODALITY_KEYS, MediaExamples, encode_dataset
    from latentlm_jax.data.shapes_tones import ShapesTones
    from latentlm_jax.train.checkpoint_io import load_model, load_run_config
    from latentlm_jax.train.metrics import format_duration

    config = load_run_config(args.vae_workdir)
    if not args.config:  # overrides go to the dataset's config when there is one
        apply_overrides(config, getattr(args, "config_overrides", []))
    if config.task not in MODALITY_KEYS:
        raise ConfigError("task", f"{args.vae_workdir} is a {config.task!r} run, not a σ-VAE")
    if args.num_examples <= 0:
        raise ConfigError("", f"--num-examples must be positive, got {args.num_examples}")
    data_config = None
    if args.config:
        from latentlm_jax.cli.common import load_config
        from latentlm_jax.data.pipeline import make_source

        data_config = load_config(args)
        if data_config.data.source not in MEDIA_SOURCES:
            raise ConfigError("data.source", f"`latentlm encode` reads media: one of "
                                             f"{', '.join(MEDIA_SOURCES)}; got "
                                             f"{data_config.data.source!r}")
    model, config, step = load_model(args.vae_workdir, config=config)
    if data_config is None:
        dataset = ShapesTones(split=args.split, seed=config.data.seed)
    else:
        data_config.data.split = args.split
        dataset = MediaExamples(make_source(data_config), config.task)
    num_examples = min(args.num_examples, len(dataset))

    def progress(done: int, total: int, seconds: float) -> None:
        eta = seconds / max(done, 1) * (total - done)
        print(f"\rencoding {done}/{total} ({done / seconds:,.0f}/s, ETA {format_duration(eta)})",
              end="" if done < total else "\n", flush=True)

    try:
        stats = encode_dataset(model, config.task, dataset, args.out, num_examples=num_examples,
                               batch_size=args.batch_size, seed=config.seed, progress=progress)
    except ValueError as e:  # nothing usable in the dataset
        raise ConfigError("", str(e)) from e
    print(f"wrote {stats['encoded']} {stats['modality']} latent sequences of "
          f"{stats['sequence_length']} × {stats['latent_dim']} (checkpoint step {step}) to "
          f"{args.out}")
    if stats["skipped"]:
        print("skipped " + ", ".join(f"{n} ({reason})" for reason, n in stats["skipped"].items()))
    return 0
