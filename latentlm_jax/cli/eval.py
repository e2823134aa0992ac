"""``latentlm eval --workdir W``: reconstruction quality and latent diagnostics of trained σ-VAEs.

    latentlm eval --workdir runs/vae_image_tiny --examples 1000
    latentlm eval --workdir runs/vae_image_tiny --workdir runs/vae_image_plain   # compare

Per run it prints the test-split quality of decode(μ) (PSNR or SNR, and the fraction the
DATASET.md scorer finds correct), the std of μ per latent dimension and of the sampled z, and the
same quality when μ is perturbed by Gaussian noise of 0.25–2 × its per-dimension std — the
robustness to its own errors that an autoregressive model needs (docs/vae.md). Results also go to
``W/eval/vae_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.modality import VAE_TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", action="append", required=True,
                        help="a vae_image / vae_audio run directory (repeat to compare runs)")
    parser.add_argument("--examples", type=int, default=1000,
                        help="test-split examples to reconstruct (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    if args.examples <= 0:
        raise ConfigError("", f"--examples must be positive, got {args.examples}")
    import jax

    from latentlm_jax.train.checkpoint_io import load_model, load_run_config
    from latentlm_jax.vae.diagnostics import (
        audio_diagnostics,
        format_diagnostics,
        image_diagnostics,
    )
    from latentlm_jax.vae.task import load_test_examples

    results = {}
    for workdir in args.workdir:
        if not os.path.isdir(workdir):
            raise ConfigError("", f"--workdir {workdir} does not exist")
        config = load_run_config(workdir)
        if config.task not in VAE_TASKS.values():
            raise ConfigError("task", f"{workdir} is a {config.task!r} run; `latentlm eval` "
                                      f"evaluates σ-VAE runs ({', '.join(VAE_TASKS.values())})")
        model, config, step = load_model(workdir, config=config, use_ema=not args.no_ema)
        examples = load_test_examples(config, args.examples)
        fn = image_diagnostics if config.task == "vae_image" else audio_diagnostics
        result = fn(model, examples, jax.random.key(args.seed))
        result.update(workdir=workdir, step=step, examples=args.examples, task=config.task)
        out = os.path.join(workdir, "eval", "vae_eval.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        results[f"{workdir} (step {step}, {args.examples} test examples)"] = result
    print(format_diagnostics(results))
    return 0
