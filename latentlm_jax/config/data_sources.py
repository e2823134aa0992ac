"""The names ``config.data.source`` accepts, and which of them each kind of run can read.

Kept in ``config/`` so validation can check them without importing the data pipeline
(``latentlm_jax/data/pipeline.py`` builds the sources these names stand for).
"""

from __future__ import annotations

TEXT_SOURCES = ("shapes_tones_captions", "text_files")
EXAMPLE_SOURCES = ("shapes_tones", "manifest", "tfds", "latents")
# A fixed random batch in the layout of docs/benchmarks.md, read only by `latentlm bench train`
# (latentlm_jax/data/synthetic.py); every other command refuses it.
BENCH_SOURCES = ("synthetic",)
ALL_SOURCES = TEXT_SOURCES + EXAMPLE_SOURCES + BENCH_SOURCES
# The built-in "shapes & tones" data, under its two names (captions only / whole examples).
BUILTIN_SOURCES = ("shapes_tones_captions", "shapes_tones")
# Sources of images and audio a σ-VAE run (task vae_image / vae_audio) trains and is evaluated on:
# the built-in data (either name: the default data.source means the built-in examples), or media.
USER_MEDIA_SOURCES = ("manifest", "tfds")
VAE_SOURCES = BUILTIN_SOURCES + USER_MEDIA_SOURCES
