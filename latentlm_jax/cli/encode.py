"""``latentlm encode --vae-workdir W [--config C] --out DIR``: a dataset → normalised latents.

The dataset is the one the σ-VAE run trained on when that was a manifest or TFDS data (its own
config's ``data`` section), else the built-in one; ``--config C`` names another (``data.source``
``shapes_tones``, ``manifest`` or ``tfds``). Examples without the σ-VAE's modality are counted and
left out; unusable ones follow ``data.bad_input`` (skip and count, or stop at the first with one
line naming its file and line). Next to the shards, ``DIR/latents.json`` records what a LatentLM
needs to train on them (``data.latents_dir=DIR``; :mod:`latentlm_jax.data.latents_dir`).
"""

from __future__ import annotations

import argparse

import ml_collections as mlc

from latentlm_jax import paths
from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.data_sources import USER_MEDIA_SOURCES
from latentlm_jax.config.loading import ConfigError, apply_overrides
from latentlm_jax.config.validate import check_vae_data

MEDIA_SOURCES = ("shapes_tones", *USER_MEDIA_SOURCES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae-workdir", required=True, help="workdir of a trained σ-VAE run")
    parser.add_argument("--config", default=None,
                        help="config whose data section names the dataset (data.source "
                             "shapes_tones | manifest | tfds); default: the σ-VAE run's own "
                             "manifest / TFDS data, else the built-in data")
    parser.add_argument("--out", required=True,
                        help="output directory: shards, stats-<modality>.json, latents.json")
    parser.add_argument("--num-examples", type=int, default=20_000,
                        help="examples of the split to encode (default 20000, or all there are)")
    parser.add_argument("--split", default="train", help="dataset split (default train)")
    parser.add_argument("--batch-size", type=int, default=128)


def media_settings(vae_config: mlc.ConfigDict, modality: str) -> dict[str, int]:
    v = vae_config.vae
    if modality == "image":
        return {"image_resolution": int(v.image.resolution)}
    return {"sample_rate": int(v.audio.sample_rate), "num_samples": int(v.audio.num_samples)}


def describe_source(data: mlc.ConfigDict | None, split: str, seed: int) -> str:
    if data is None or data.source == "shapes_tones":
        return f"shapes_tones {split} split, seed {seed}"
    if data.source == "manifest":
        return f"manifest {paths.as_str(data.manifest)}"
    return f"tfds {data.tfds_name}/{data.tfds_split}"


def media_examples(data_config: mlc.ConfigDict, task: str):
    """A manifest / TFDS source as :class:`MediaExamples` of ``task``'s modality: its media read
    alone (lines of another modality are not applicable, not bad input; their files are never
    opened) with each example's text read alone beside it, when the data has text."""
    from latentlm_jax.data.encode_latents import MODALITY_KEYS, MediaExamples
    from latentlm_jax.data.pipeline import make_source

    d = data_config.data
    media = make_source(data_config, only=MODALITY_KEYS[task][0])
    has_text = d.source == "manifest" or "text" in {
        item.partition("=")[0].strip() for item in d.tfds_feature_map.split(",")}
    captions = make_source(data_config, only="text") if has_text else None
    return MediaExamples(media, task, captions)


def run(args: argparse.Namespace) -> int:
    from latentlm_jax.cli.common import check_out_dir

    check_out_dir(args.out)  # before the σ-VAE loads
    quiet_logs()
    from latentlm_jax.data.bad_input import DataError, print_skip_summary
    from latentlm_jax.data.encode_latents import MODALITY_KEYS, encode_dataset
    from latentlm_jax.data.latents_dir import descriptor_entry, update_descriptor
    from latentlm_jax.data.shapes_tones import ShapesTones
    from latentlm_jax.train.checkpoint_io import load_model, load_run_config
    from latentlm_jax.train.metrics import format_duration
    from latentlm_jax.vae.config import audio_latent_shape, image_latent_shape

    config = load_run_config(args.vae_workdir)
    if not args.config:  # overrides go to the dataset's config when there is one
        apply_overrides(config, getattr(args, "config_overrides", []))
    if config.task not in MODALITY_KEYS:
        raise ConfigError("task", f"{args.vae_workdir} is a {config.task!r} run, not a σ-VAE")
    if args.num_examples <= 0 or args.batch_size <= 0:
        raise ConfigError("", f"--num-examples and --batch-size must be positive, got "
                              f"{args.num_examples} and {args.batch_size}")
    modality, caption_key = MODALITY_KEYS[config.task]
    if args.config:
        from latentlm_jax.cli.common import load_config

        data_config = load_config(args)
        if data_config.data.source not in MEDIA_SOURCES:
            raise ConfigError("data.source", f"`latentlm encode` reads media: one of "
                                             f"{', '.join(MEDIA_SOURCES)}; got "
                                             f"{data_config.data.source!r}")
    else:
        data_config = config if config.data.source in USER_MEDIA_SOURCES else None
    if data_config is not None:  # media of the σ-VAE's modality, at its input size
        check_vae_data(config.task, data_config.data, config.vae)
    bad_input = (data_config or config).data.bad_input
    model, config, step = load_model(args.vae_workdir, config=config)
    if data_config is None or data_config.data.source == "shapes_tones":
        dataset = ShapesTones(split=args.split, seed=config.data.seed)
        caption_field = caption_key
    else:
        data_config.data.split = args.split
        dataset = media_examples(data_config, config.task)
        caption_field = "text"
    num_examples = min(args.num_examples, len(dataset))
    shown = [False]

    def progress(done: int, total: int, seconds: float) -> None:
        eta = seconds / max(done, 1) * (total - done)
        shown[0] = done < total
        print(f"\rencoding {done}/{total} ({done / max(seconds, 1e-9):,.0f}/s, ETA "
              f"{format_duration(eta)})", end="" if done < total else "\n", flush=True)

    try:
        stats = encode_dataset(model, config.task, dataset, args.out, num_examples=num_examples,
                               batch_size=args.batch_size, seed=config.seed, progress=progress,
                               bad_input=bad_input)
    except (ValueError, DataError) as e:  # nothing usable; a bad example under "error"
        if shown[0]:
            print(flush=True)  # end the progress line before the error
        raise ConfigError("", str(e)) from e
    grid = (image_latent_shape(config.vae) if modality == "image"
            else audio_latent_shape(config.vae))
    entry = descriptor_entry(
        stats, grid=grid, vae_workdir=args.vae_workdir, vae_step=step,
        caption_field=caption_field, source=describe_source(data_config and data_config.data,
                                                            args.split, config.data.seed),
        media=media_settings(config, modality), seed=config.seed)
    import jax

    descriptor = update_descriptor(args.out, modality, entry) if jax.process_index() == 0 else ""
    print(f"wrote {stats['encoded']} {modality} latent sequences of {stats['sequence_length']} × "
          f"{stats['latent_dim']} (checkpoint step {step}) to {args.out}")
    if stats["without_modality"]:
        n = stats["without_modality"]
        print(f"not encoded: {n} example{'s' * (n != 1)} without {modality}")
    print_skip_summary(stats["skipped"])
    if descriptor:
        if paths.is_url(args.out):  # ArrayRecord shards are read from a mount (docs/storage.md)
            print(f"descriptor: {descriptor} (train on it from a gcsfuse mount of the bucket: "
                  "latentlm train --config configs/latentlm_tiny.py:MOUNTED_FOLDER --workdir DIR)")
        else:
            print(f"descriptor: {descriptor} (train on it: latentlm train --config "
                  f"configs/latentlm_tiny.py:{args.out} --workdir DIR)")
    return 0
