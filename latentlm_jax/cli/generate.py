"""``latentlm generate``: text → image / audio, or image / audio → text, from a trained LatentLM.

    latentlm generate --workdir W --prompt "a large red circle in the top left" \
        --modality image --num-samples 4 --out samples/
    latentlm generate --workdir W --prompts-file prompts.jsonl --out samples/   # in bulk, batched
    latentlm generate --workdir W --image photo.png --modality text
    latentlm generate --workdir W --class-id 3,17 --cfg-scale 3 --num-samples 4 --out samples/
    latentlm generate --workdir W --devices all ...   # weights sharded over every local device

Text → media writes ``<prompt index>_<sample>.png|wav`` and ``manifest.jsonl`` (one line per file
with its prompt and settings; :mod:`latentlm_jax.generate.bulk`), and, for images,
``images.npy``: the decoded images unquantised, float32 ``[N, H, W, 3]`` clamped to [0, 1], row i
= the i-th image line of the manifest (what ``latentlm eval-images`` scores as LatentLM's
authors do; ``--no-float-images`` leaves it out). Prompts files:
:mod:`latentlm_jax.generate.prompts`.
"""

from __future__ import annotations

import argparse
import time

from latentlm_jax import paths
from latentlm_jax.cli.common import check_out_dir, quiet_logs
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.generate.prompts import PromptRequest, read_prompts, single_prompt

OUTPUTS = ("image", "audio", "text")  # the latent modalities' names, and text
UNDERSTANDING_INPUTS = ("mean", "sample")  # generate/codecs.py's (not imported: start-up time)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True,
                        help="workdir of a trained LatentLM run, or its export (latentlm export)")
    parser.add_argument("--modality", default=None,
                        help="what to generate: image | audio | text (with --prompts-file: the "
                             "default for lines that name none)")
    parser.add_argument("--prompt", help="caption to generate an image or audio for")
    parser.add_argument("--prompts-file",
                        help="many prompts: one per line, or JSONL (*.jsonl) with prompt, "
                             "modality, count, seed per line")
    parser.add_argument("--class-id", default=None,
                        help="class-conditional model (data.label): images of class K, of "
                             "K1,K2,..., or of 'all' classes (guided by the null class with "
                             "--cfg-scale)")
    parser.add_argument("--image", help="image file to caption (with --modality text)")
    parser.add_argument("--audio", help="audio file to transcribe (with --modality text)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="samples generated together (default 16)")
    parser.add_argument("--out", default="", help="output directory for PNG / WAV files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="dpm++2m", help="ddpm | ddim | dpm++2m")
    parser.add_argument("--steps", type=int, default=20, help="solver steps per latent")
    parser.add_argument("--cfg-scale", type=float, default=3.0, help="classifier-free guidance")
    parser.add_argument("--temperature", type=float, default=1.0, help="latent noise scale")
    parser.add_argument("--text-temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")
    parser.add_argument("--no-float-images", action="store_true",
                        help="do not write OUT/images.npy (the decoded images as float32 in "
                             "[0, 1] beside the 8-bit PNGs, for eval-images; 0.79 MB per "
                             "256-px image)")
    parser.add_argument("--understanding-input", default="mean",
                        help="what an --image / --audio to caption is encoded as: the σ-VAE's "
                             "mean μ, or one noisy sample z = μ + σ·ε as in training (seeded by "
                             "--seed): mean | sample (default mean)")
    add_devices_argument(parser)


def add_devices_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", default="1",
                        help="local devices to load the weights onto, sharded over them (fsdp): "
                             "a count N or 'all' (default 1)")


def check_request(args: argparse.Namespace) -> list[PromptRequest]:
    """Every bad request ends here with one clear message; returns the text → media requests
    (none for captioning)."""
    if args.modality is not None and args.modality not in OUTPUTS:
        raise ConfigError("", f"--modality must be one of {', '.join(OUTPUTS)}; "
                              f"got {args.modality!r}")
    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("", f"--num-samples and --batch-size must be ≥ 1, got "
                              f"{args.num_samples} and {args.batch_size}")
    if not 0 < args.top_p <= 1 or args.top_k < 0 or args.steps < 1:
        raise ConfigError("", "need 0 < --top-p ≤ 1, --top-k ≥ 0 and --steps ≥ 1")
    if args.seed < 0:
        raise ConfigError("", f"--seed must be ≥ 0, got {args.seed}")
    if args.understanding_input not in UNDERSTANDING_INPUTS:
        raise ConfigError("", f"--understanding-input must be one of "
                              f"{', '.join(UNDERSTANDING_INPUTS)}; "
                              f"got {args.understanding_input!r}")
    if getattr(args, "class_id", None) is not None:
        from latentlm_jax.generate.class_prompts import parse_class_ids

        if args.modality not in (None, "image") or args.prompt is not None \
                or args.prompts_file or args.image or args.audio:
            raise ConfigError("", "--class-id generates images from class ids alone: no "
                                  "--prompt, --prompts-file, --image, --audio or --modality "
                                  "other than image")
        if not args.out:
            raise ConfigError("", "--out DIR is required to write generated files")
        check_out_dir(args.out)
        parse_class_ids(args.class_id)  # its requests once the model's classes are known
        return []
    if args.modality == "text":
        if args.prompt is not None or args.prompts_file:
            raise ConfigError("", "--prompt / --prompts-file make images or audio; --modality "
                                  "text captions --image PATH or --audio PATH")
        if bool(args.image) == bool(args.audio):
            raise ConfigError("", "--modality text needs exactly one of --image PATH or "
                                  "--audio PATH")
        path = args.image or args.audio
        if not paths.is_file(path):
            raise ConfigError("", f"input file not found: {path}")
        return []
    if args.image or args.audio:
        raise ConfigError("", "--image / --audio are inputs for --modality text")
    if args.prompts_file and args.prompt is not None:
        raise ConfigError("", "give --prompt or --prompts-file, not both")
    if args.prompts_file:
        requests = read_prompts(args.prompts_file, modality=args.modality,
                                count=args.num_samples, seed=args.seed)
    elif args.modality is None:
        raise ConfigError("", "--modality image|audio|text is required (or a --prompts-file)")
    elif args.prompt is None or not args.prompt.strip():
        raise ConfigError("", f"--modality {args.modality} needs a non-empty --prompt (or "
                              "--prompts-file F)")
    else:
        requests = [single_prompt(args.prompt, modality=args.modality, count=args.num_samples,
                                  seed=args.seed)]
    if not args.out:
        raise ConfigError("", "--out DIR is required to write generated files")
    check_out_dir(args.out)
    return requests


def run(args: argparse.Namespace) -> int:
    requests = check_request(args)
    quiet_logs()
    import jax

    from latentlm_jax.data.tokenizer import make_tokenizer
    from latentlm_jax.generate.generator import SamplingOptions
    from latentlm_jax.train.checkpoint_io import (
        inference_devices,
        inference_mesh,
        load_model,
        load_run_config,
    )

    devices = inference_devices(args.devices)
    config = load_run_config(args.workdir)
    model, config, step = load_model(args.workdir, config=config, use_ema=not args.no_ema,
                                     mesh=inference_mesh(config, devices))
    if not hasattr(model, "heads"):
        raise ConfigError("", f"{args.workdir} holds a text-only model; nothing to generate "
                              "images or audio with")
    tok = make_tokenizer(config.data)
    opts = SamplingOptions(method=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                           temperature=args.temperature, text_temperature=args.text_temperature,
                           top_k=args.top_k, top_p=args.top_p)
    if getattr(args, "class_id", None) is not None:
        from latentlm_jax.generate.class_prompts import (
            check_class_ids,
            class_requests,
            parse_class_ids,
        )

        num_classes = config.model.get("num_classes", 0)
        ids = parse_class_ids(args.class_id, num_classes)
        check_class_ids(ids or [0], num_classes, args.workdir)
        requests = class_requests(ids, count=args.num_samples, seed=args.seed)
        return _text_to_media(args, requests, model, config, step, tok, opts, devices,
                              labels=dict(enumerate(ids)))
    if requests:
        return _text_to_media(args, requests, model, config, step, tok, opts, devices)
    return _caption(args, model, config, tok, opts, jax.random.key(args.seed), devices)


def _text_to_media(args, requests: list[PromptRequest], model, config, step: int, tok,
                   opts, devices: list, labels: dict[int, int] | None = None) -> int:
    """Text → media; with ``labels`` (request index → class id) class → image instead."""
    import contextlib
    import dataclasses

    import numpy as np

    from latentlm_jax.generate.bulk import FLOAT_IMAGES, MANIFEST, run_batches, save_medium
    from latentlm_jax.generate.codecs import MediaCodec
    from latentlm_jax.generate.generator import Generator
    from latentlm_jax.image_metrics.float_images import FloatImageWriter
    from latentlm_jax.modality import IMAGE, MODALITY_IDS, MODALITY_NAMES, latent_dims
    from latentlm_jax.train.checkpoint_io import export_info, has_ema
    from latentlm_jax.train.metrics import format_duration
    from latentlm_jax.vae.samples import to_uint8

    # The weights actually used, for the manifest: an export holds one kind; a run without an
    # EMA has only the raw ones.
    info = export_info(args.workdir)
    weights = info["weights"] if info else (
        "ema" if has_ema(config) and not args.no_ema else "raw")
    enabled = {MODALITY_IDS[r.modality] for r in requests}
    missing = ", ".join(MODALITY_NAMES[m] for m in sorted(enabled - set(latent_dims(config.model))))
    if missing:
        raise ConfigError("", f"{args.workdir} holds a LatentLM without {missing} latents; it "
                              f"cannot generate {missing}")
    codecs = {m: MediaCodec(config, m, devices) for m in sorted(enabled)}
    spans = {m: int(np.prod(c.grid()[:-1])) for m, c in codecs.items()}  # latents per span
    for r in requests if labels is None else ():
        budget = config.data.seq_len - spans[MODALITY_IDS[r.modality]] - 4
        n = len(tok.encode(r.prompt))
        if n > budget:
            where = f"{args.prompts_file} line {r.line}" if r.line else "--prompt"
            raise ConfigError("", f"{where}: the prompt is {n} tokens; at most {budget} fit "
                                  f"before a {r.modality} in this model's sequence of "
                                  f"{config.data.seq_len}")
    image_latents = spans.get(IMAGE, 0)
    gen = Generator(model, config.model, tok, image_latents=image_latents)
    per_modality = {m: dataclasses.replace(opts, max_audio_latents=spans[m]) for m in codecs}
    clip = {m: c.vae_config.vae.audio.num_samples for m, c in codecs.items() if m != IMAGE}
    n_images = sum(r.count for r in requests if r.modality == MODALITY_NAMES[IMAGE])
    float_path = str(paths.join(args.out, FLOAT_IMAGES))
    float_images = (FloatImageWriter(float_path, n_images)
                    if n_images and not args.no_float_images else contextlib.nullcontext())

    def generate(batch):
        m = MODALITY_IDS[batch.modality]
        if labels is not None:
            from latentlm_jax.generate.class_prompts import class_to_latents

            ks = [labels[req.index] for req, _ in batch.items]
            ks += [ks[-1]] * (batch.rows - len(ks))
            latents = class_to_latents(gen, ks, batch.key(), per_modality[m])
        else:
            ks = [None] * batch.rows
            latents = gen.text_to_latents(batch.prompts(), m, batch.key(), per_modality[m])
        if m == IMAGE:  # floats → the PNGs' uint8 (decode_batch's rounding) and images.npy
            raw = codecs[m].decode_images_float(latents)
            media = to_uint8(raw)
            if n_images and not args.no_float_images:
                float_images.append(np.clip(raw[:len(batch.items)], -1.0, 1.0) * 0.5 + 0.5)
        else:
            media = codecs[m].decode_batch(latents, num_samples=clip[m])
        return [(x, {"latents": len(z), **({} if k is None else {"label": k})})
                for x, z, k in zip(media, latents, ks, strict=True)]

    def save(path: str, modality: str, medium) -> None:
        rate = codecs[MODALITY_IDS[modality]].vae_config.vae.audio.sample_rate
        save_medium(path, modality, medium, rate)

    settings = {"workdir": paths.as_str(args.workdir), "step": step,
                "weights": weights, "sampler": opts.method,
                "steps": opts.steps, "cfg_scale": opts.cfg_scale,
                "temperature": opts.temperature}
    total = sum(r.count for r in requests)
    t0 = time.perf_counter()

    def progress(done: int, batches: int, files: int) -> None:
        s = time.perf_counter() - t0
        eta = s / files * (total - files)
        print(f"\rgenerated {files}/{total} (batch {done}/{batches}, ETA "
              f"{format_duration(eta)})", end="" if done < batches else "\n", flush=True)

    with float_images:
        lines = run_batches(requests, args.batch_size, args.out, generate, save, settings,
                            progress)
    print(f"wrote {len(lines)} files for {len(requests)} prompts to {args.out}; list: "
          f"{paths.join(args.out, MANIFEST)}")
    if n_images and not args.no_float_images:
        print(f"float images (unquantised, for eval-images): {float_path}")
    return 0


def _caption(args, model, config, tok, opts, key, devices: list) -> int:
    from latentlm_jax.data.bad_input import BadInput
    from latentlm_jax.data.media import DEFAULT_IMAGE_CROP, load_audio, load_image
    from latentlm_jax.generate.codecs import MediaCodec
    from latentlm_jax.generate.generator import Generator
    from latentlm_jax.modality import AUDIO, IMAGE

    modality = IMAGE if args.image else AUDIO
    codec = MediaCodec(config, modality, devices)
    v = codec.vae_config.vae  # load the input as the σ-VAE takes it (size, crop)
    crop = codec.vae_config.data.get("image_crop", DEFAULT_IMAGE_CROP)
    try:
        media = (load_image(args.image, v.image.resolution, crop=crop) if args.image
                 else load_audio(args.audio, v.audio.sample_rate, v.audio.num_samples))
    except BadInput as e:
        raise ConfigError("", f"cannot read {args.image or args.audio}: {e}") from e
    import jax

    z = codec.encode(media[None], args.understanding_input,
                     jax.random.fold_in(key, 1))[0]  # a key apart from the caption sampler's
    gen = Generator(model, config.model, tok, image_latents=len(z) if modality == IMAGE else 0)
    texts = gen.latents_to_text([z] * args.num_samples, modality, key, opts)
    for text in texts:
        print(text)
    return 0
