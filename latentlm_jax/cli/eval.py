"""``latentlm eval --workdir W [--config C]``: reconstruction quality and latent diagnostics of
trained σ-VAEs, on the built-in test split or on your own data.

    latentlm eval --workdir runs/vae_image_tiny --examples 1000
    latentlm eval --workdir runs/vae_image_tiny --workdir runs/vae_image_plain   # compare
    latentlm eval --workdir runs/my_vae --config.data.manifest=held_out.jsonl      # your own data

Per run it prints the quality of decode(μ) — PSNR for images, SNR and log-spectral distance for
audio, and on the built-in data the fraction the DATASET.md scorer finds correct — the std of μ
per latent dimension and of the sampled z, and the same quality when μ is perturbed by Gaussian
noise of 0.25–2 × its per-dimension std: the robustness to its own errors that an autoregressive
model needs (docs/vae.md). The data is ``--config C``'s (or, without it, the run's own: the
built-in test split, or its manifest / TFDS split); see ``cli/vae_data.py``. Results go to
``W/eval/vae_eval.json``, and ``W/eval/reconstructions.png`` (originals above reconstructions)
or ``W/eval/{original,recon}_<i>.wav``.
"""

from __future__ import annotations

import argparse
import json
import os

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.cli.vae_data import add_data_arguments
from latentlm_jax.config.loading import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", action="append", required=True,
                        help="a vae_image / vae_audio run directory, or its export (repeat to "
                             "compare runs)")
    add_data_arguments(parser)
    parser.add_argument("--examples", type=int, default=1000,
                        help="examples to reconstruct: the first usable ones (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")
    parser.add_argument("--devices", default="1",
                        help="local devices to load the weights onto, sharded over them (fsdp): "
                             "a count N or 'all' (default 1)")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    if args.examples <= 0:
        raise ConfigError("", f"--examples must be positive, got {args.examples}")
    import jax

    from latentlm_jax.cli.vae_data import data_config, load_examples, load_vae_run_config
    from latentlm_jax.data.bad_input import BadInputPolicy, skip_summary
    from latentlm_jax.paths import write_text
    from latentlm_jax.train.checkpoint_io import inference_devices, inference_mesh, load_model
    from latentlm_jax.vae.diagnostics import (
        audio_diagnostics,
        format_diagnostics,
        image_diagnostics,
    )
    from latentlm_jax.vae.evaluation import reconstruct_examples, write_samples
    from latentlm_jax.vae.sources import modality_of

    devices = inference_devices(args.devices)
    results: dict = {}
    written: list[str] = []
    skipped: list[str] = []
    for workdir in args.workdir:
        run_config = load_vae_run_config(workdir)
        config = data_config(args, run_config)
        policy = BadInputPolicy(config.data.bad_input)
        examples, builtin, name = load_examples(run_config, config, args.examples, policy)
        model, run_config, step = load_model(workdir, config=run_config, use_ema=not args.no_ema,
                                             mesh=inference_mesh(run_config, devices))
        modality = modality_of(run_config.task)
        fn = image_diagnostics if modality == "image" else audio_diagnostics
        result = fn(model, [e for _, e in examples], jax.random.key(args.seed), builtin=builtin)
        out_dir = os.path.join(workdir, "eval")
        files = write_samples(out_dir, reconstruct_examples(model, modality, examples[:16],
                                                            builtin),
                              run_config.vae.audio.sample_rate)
        result.update(workdir=workdir, step=step, examples=len(examples), task=run_config.task,
                      data=name, skipped=policy.counts())
        write_text(os.path.join(out_dir, "vae_eval.json"), json.dumps(result, indent=1))
        written.append(f"{out_dir}/: vae_eval.json, " + _describe_files(files))
        results[f"{workdir} (step {step}, {len(examples)} examples of {name})"] = result
        if policy.counts():
            skipped.append(f"{workdir}: {skip_summary(policy.counts())}")
    print(format_diagnostics(results))
    for line in written + skipped:
        print(line)
    return 0


def _describe_files(paths: list[str]) -> str:
    """``reconstructions.png (originals above reconstructions)`` or ``original_<i>.wav,
    recon_<i>.wav for i < 4``."""
    if len(paths) == 1:
        return f"{os.path.basename(paths[0])} (originals above reconstructions)"
    return f"original_<i>.wav, recon_<i>.wav for i < {len(paths) // 2}"
