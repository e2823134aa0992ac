"""``latentlm generate``: text → image / audio, or image / audio → text, from a trained LatentLM.

    latentlm generate --workdir W --prompt "a large red circle in the top left" \
        --modality image --num-samples 4 --out samples/
    latentlm generate --workdir W --image photo.png --modality text
"""

from __future__ import annotations

import argparse
import os

from latentlm_jax.cli.common import quiet_logs
from latentlm_jax.config.loading import ConfigError

OUTPUTS = ("image", "audio", "text")  # the latent modalities' names, and text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="workdir of a trained LatentLM run")
    parser.add_argument("--modality", required=True, help="what to generate: image | audio | text")
    parser.add_argument("--prompt", help="caption to generate an image or audio for")
    parser.add_argument("--image", help="image file to caption (with --modality text)")
    parser.add_argument("--audio", help="audio file to transcribe (with --modality text)")
    parser.add_argument("--num-samples", type=int, default=1)
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


def check_request(args: argparse.Namespace) -> None:
    """Every bad request ends here with one clear message."""
    if args.modality not in OUTPUTS:
        raise ConfigError("", f"--modality must be one of {', '.join(OUTPUTS)}; "
                              f"got {args.modality!r}")
    if args.num_samples < 1:
        raise ConfigError("", f"--num-samples must be ≥ 1, got {args.num_samples}")
    if args.modality in ("image", "audio"):
        if args.prompt is None or not args.prompt.strip():
            raise ConfigError("", f"--modality {args.modality} needs a non-empty --prompt")
        if args.image or args.audio:
            raise ConfigError("", "--image / --audio are inputs for --modality text")
        if not args.out:
            raise ConfigError("", "--out DIR is required to write generated files")
    else:
        if bool(args.image) == bool(args.audio):
            raise ConfigError("", "--modality text needs exactly one of --image PATH or "
                                  "--audio PATH")
        path = args.image or args.audio
        if not os.path.isfile(path):
            raise ConfigError("", f"input file not found: {path}")
    if not 0 < args.top_p <= 1 or args.top_k < 0 or args.steps < 1:
        raise ConfigError("", "need 0 < --top-p ≤ 1, --top-k ≥ 0 and --steps ≥ 1")


def run(args: argparse.Namespace) -> int:
    check_request(args)
    quiet_logs()
    import jax
    import numpy as np

    from latentlm_jax.data.tokenizer import make_tokenizer
    from latentlm_jax.generate.codecs import MediaCodec
    from latentlm_jax.generate.generator import Generator, SamplingOptions
    from latentlm_jax.modality import AUDIO, IMAGE, MODALITY_IDS
    from latentlm_jax.train.checkpoint_io import load_model

    model, config, step = load_model(args.workdir, use_ema=not args.no_ema)
    if not hasattr(model, "heads"):
        raise ConfigError("", f"{args.workdir} holds a text-only model; nothing to generate "
                              "images or audio with")
    tok = make_tokenizer(config.data)
    opts = SamplingOptions(method=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                           temperature=args.temperature, text_temperature=args.text_temperature,
                           top_k=args.top_k, top_p=args.top_p)
    key = jax.random.key(args.seed)

    if args.modality in ("image", "audio"):
        modality = MODALITY_IDS[args.modality]
        codec = MediaCodec(config, modality)
        n_img = int(np.prod(codec.grid()[:-1])) if modality == IMAGE else 0
        budget = config.data.seq_len - n_img - 4
        if len(tok.encode(args.prompt)) > budget:
            raise ConfigError("", f"--prompt is {len(tok.encode(args.prompt))} tokens; at most "
                                  f"{budget} fit in this model's sequence of {config.data.seq_len}")
        gen = Generator(model, config.model, tok, image_latents=n_img)
        latents = gen.text_to_latents([args.prompt] * args.num_samples, modality, key, opts)
        os.makedirs(args.out, exist_ok=True)
        for i, z in enumerate(latents):
            media = codec.decode(z)
            path = os.path.join(args.out, f"sample_{i:03d}.{'png' if modality == IMAGE else 'wav'}")
            _save(path, media, config.data.sample_rate)
            print(path)
        return 0

    modality = IMAGE if args.image else AUDIO
    codec = MediaCodec(config, modality)
    from latentlm_jax.data.bad_input import BadInput
    from latentlm_jax.data.media import load_audio, load_image

    d = config.data
    try:
        media = (load_image(args.image, d.image_resolution) if args.image
                 else load_audio(args.audio, d.sample_rate, d.audio_samples))
    except BadInput as e:
        raise ConfigError("", f"cannot read {args.image or args.audio}: {e}") from e
    z = codec.encode(media[None])[0]
    gen = Generator(model, config.model, tok, image_latents=len(z) if modality == IMAGE else 0)
    texts = gen.latents_to_text([z] * args.num_samples, modality, key, opts)
    for text in texts:
        print(text)
    return 0


def _save(path: str, media, sample_rate: int) -> None:
    if path.endswith(".png"):
        from PIL import Image

        Image.fromarray(media).save(path)
    else:
        import soundfile

        soundfile.write(path, media, sample_rate, subtype="PCM_16")
