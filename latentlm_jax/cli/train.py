"""``latentlm train --config configs/X.py --workdir DIR [--config.a.b=value ...]``"""

from __future__ import annotations

import argparse

import ml_collections as mlc

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs
from latentlm_jax.config.validate import validate
from latentlm_jax.modality import LATENT_DIM_FIELDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--workdir", required=True,
                        help="output directory: checkpoints/, metrics.jsonl, tensorboard/, "
                             "samples/; re-running with the same workdir resumes")


def check_input_files(config: mlc.ConfigDict, workdir: str = "") -> None:
    """Input files (a manifest, pre-encoded latents) must exist, and the workdir must be usable,
    before a workdir is made or anything compiles."""
    from latentlm_jax import paths
    from latentlm_jax.cli.input_checks import check_latents, check_tokenizer
    from latentlm_jax.config.loading import ConfigError

    if workdir and paths.exists(workdir) and not paths.is_dir(workdir):
        raise ConfigError("", f"--workdir {workdir} is a file, not a directory")
    if config.task == "lm":
        check_tokenizer(config)
    if config.data.source == "synthetic":  # bench train's fixed batch: nothing to train on
        raise ConfigError("data.source", "'synthetic' is a fixed random batch that only "
                                         "`latentlm bench train` reads; training needs real data")
    if config.data.source == "manifest" and not paths.is_file(config.data.manifest):
        raise ConfigError("data.manifest", f"no such file: {paths.as_str(config.data.manifest)}")
    if config.data.source == "tfds":  # opening it reads only its metadata
        from latentlm_jax.data.pipeline import make_source
        from latentlm_jax.modality import MODALITY_NAMES, VAE_TASKS

        only = {t: MODALITY_NAMES[m] for m, t in VAE_TASKS.items()}.get(config.task)
        make_source(config, only=only)
    if config.task == "lm" and config.data.source == "latents":
        from latentlm_jax.data.array_record_source import expand_paths

        try:
            shards = expand_paths(tuple(config.data.latent_files))
        except FileNotFoundError as e:
            raise ConfigError("data.latent_files", f"{e} (make them with `latentlm encode`, or "
                                                   f"`make demo` for runs/demo/latents)") from e
        except ValueError as e:  # none given, or in a bucket (URL_SHARDS)
            raise ConfigError("data.latent_files", str(e)) from e
        check_latents(config, shards)
        from latentlm_jax.data.latent_noise import latent_noise_of

        # old-format folders under data.latent_noise=fresh, and shards without stats under
        # data.latent_normalisation=scalar: refused before the workdir is made
        latent_noise_of(config.data, shards)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    quiet_logs()
    from latentlm_jax.data.latents_dir import resolve_latents_dir

    if resolve_latents_dir(config):  # dims, shards, stats and σ-VAEs from the encoded folder
        validate(config)
        print(f"data.latents_dir={config.data.latents_dir}: "
              + ", ".join(f"{f}={config.model[f]}" for f in LATENT_DIM_FIELDS.values()))
    check_input_files(config, args.workdir)
    import jax

    from latentlm_jax.parallel import distributed
    from latentlm_jax.parallel.mesh import num_slices
    from latentlm_jax.parallel.mesh_check import check_mesh
    from latentlm_jax.train.checkpoint_io import save_run_config
    from latentlm_jax.train.trainer import train
    from latentlm_jax.train.workdir_check import check_resume, probe_workdir

    distributed.initialize(config)  # before process_index: only process 0 writes config.json
    # Every check that can fail runs before the workdir is made or config.json overwritten.
    devices = jax.devices()
    check_mesh(config, len(devices), num_slices(devices))
    check_resume(config, args.workdir)
    if jax.process_index() == 0:
        probe_workdir(args.workdir)  # mkdir -p, then write + fsync + delete a small file
        save_run_config(config, args.workdir)

    train(config, args.workdir)
    return 0
