"""A captioned manifest of photo-like images (and a few tones) made on the fly, for trying the
"train on your own data" path and measuring it without downloading anything.

Each image is a scene: a sky-to-ground gradient with a horizon, a texture (value noise), two to
four shapes (circles, boxes, triangles) with soft shading and shadows, sensor noise, at a size
and aspect ratio of its own (the loader scales and centre-crops it). Its caption names the scene
and its largest shapes. Audio clips are short tones or chords with a caption naming them.

    python -m latentlm_jax.data.photo_like --out runs/mine/data --images 1200 --prompts 16
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from latentlm_jax import paths

COLORS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200),
          "yellow": (230, 200, 40), "purple": (130, 50, 160), "orange": (240, 130, 30),
          "white": (235, 235, 235), "black": (25, 25, 25)}
SCENES = {"day": ((120, 170, 230), (90, 140, 70)), "dusk": ((230, 140, 90), (70, 60, 50)),
          "night": ((20, 25, 60), (30, 35, 30)), "snow": ((190, 200, 215), (235, 235, 240)),
          "beach": ((140, 200, 240), (220, 200, 150))}
SHAPES = ("circle", "box", "triangle")
NOTES = {"C4": 261.63, "E4": 329.63, "G4": 392.0, "A4": 440.0, "C5": 523.25}


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    y, x = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bottom = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
                r: float) -> np.ndarray:
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == "box":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * 1.2)
    # triangle with its apex up
    return (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.6)


def photo(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One uint8 [H, W, 3] scene and its caption."""
    h = int(rng.integers(40, 81))
    w = int(h * rng.uniform(0.8, 1.6))
    scene = str(rng.choice(list(SCENES)))
    sky, ground = (np.array(c, np.float64) for c in SCENES[scene])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    horizon = h * rng.uniform(0.35, 0.65) + _value_noise(rng, 1, w, 4)[0] * h * 0.05
    t = np.clip(yy / h, 0, 1)[..., None]
    img = np.where((yy < horizon)[..., None], sky * (1.1 - 0.4 * t), ground * (0.7 + 0.5 * t))
    img += _value_noise(rng, h, w, int(rng.integers(3, 9)))[..., None] * 25.0
    shapes = []
    for _ in range(int(rng.integers(2, 5))):
        kind, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        r = h * rng.uniform(0.08, 0.22)
        cy, cx = h * rng.uniform(0.3, 0.85), w * rng.uniform(0.1, 0.9)
        shadow = _shape_mask(kind, yy, xx - r * 0.25, cy + r * 0.25, cx, r)
        img[shadow] *= 0.6
        mask = _shape_mask(kind, yy, xx, cy, cx, r)
        shade = 1.15 - 0.35 * np.clip((yy - (cy - r)) / (2 * r), 0, 1)  # lit from above
        img[mask] = (np.array(COLORS[color]) * shade[mask][:, None])
        shapes.append((r, color, kind, "left" if cx < w / 2 else "right"))
    img += rng.normal(0, 4.0, img.shape)  # sensor noise
    shapes.sort(reverse=True)
    named = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {k} on the {side}"
             for _, c, k, side in shapes[:2]]
    caption = f"{' and '.join(named)}, {scene} scene"
    return np.clip(img, 0, 255).astype(np.uint8), caption


def caption_scene(caption: str) -> str:
    """The scene a caption names (its last words: ``…, dusk scene``)."""
    return caption.rsplit(", ", 1)[-1].removesuffix(" scene")


def scene_of(image: np.ndarray, rows: int = 6) -> str:
    """A coarse scorer: the scene whose sky and ground colours are nearest the mean colours of
    the image's top and bottom ``rows`` rows. On the 32×32 images the loader makes it names
    about 95% of the scenes right (shapes can cover the ground)."""
    img = np.asarray(image, np.float64)
    sky, ground = img[:rows].reshape(-1, 3).mean(0), img[-rows:].reshape(-1, 3).mean(0)
    return min(SCENES, key=lambda s: np.linalg.norm(sky - SCENES[s][0])
               + np.linalg.norm(ground - SCENES[s][1]))


def tone(rng: np.random.Generator, sample_rate: int, seconds: float) -> tuple[np.ndarray, str]:
    """A decaying note or two-note chord, and its caption."""
    names = sorted(rng.choice(list(NOTES), size=int(rng.integers(1, 3)), replace=False))
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    wave = sum(np.sin(2 * np.pi * NOTES[n] * t) for n in names) / len(names)
    wave = 0.5 * wave * np.exp(-t * rng.uniform(0.5, 3.0))
    return wave.astype(np.float32), "notes " + " ".join(names)


def write_manifest(out_dir: str, *, images: int, audio: int = 0, seed: int = 0,
                   sample_rate: int = 16000, seconds: float = 1.0) -> str:
    """Writes ``images`` PNGs, ``audio`` WAVs and ``manifest.jsonl`` (relative paths, captions
    as ``text``) under ``out_dir``; returns the manifest's path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths.makedirs(paths.join(out_dir, "images"))
    lines = []
    for i in range(images):
        pixels, caption = photo(rng)
        name = f"images/{i:05d}.png"
        with paths.open_file(paths.join(out_dir, name), "wb") as f:
            Image.fromarray(pixels).save(f, format="PNG")
        lines.append({"text": caption, "image": name})
    if audio:
        import soundfile

        paths.makedirs(paths.join(out_dir, "audio"))
        for i in range(audio):
            wave, caption = tone(rng, sample_rate, seconds)
            name = f"audio/{i:04d}.wav"
            with paths.open_file(paths.join(out_dir, name), "wb") as f:
                soundfile.write(f, wave, sample_rate, subtype="PCM_16", format="WAV")
            lines.append({"text": caption, "audio": name})
    path = os.path.join(out_dir, "manifest.jsonl")  # (a URL stays one)
    paths.write_text(path, "".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_prompts(path: str, n: int, seed: int) -> str:
    """``n`` captions of scenes drawn with ``seed`` (another seed than the manifest's gives
    scenes not in it), one per line: a prompts file for ``latentlm generate``."""
    rng = np.random.default_rng(seed)
    paths.write_text(path, "".join(photo(rng)[1] + "\n" for _ in range(n)))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--audio", type=int, default=0)
    p.add_argument("--prompts", type=int, default=0, help="also write OUT/prompts.txt")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(write_manifest(a.out, images=a.images, audio=a.audio, seed=a.seed))
    if a.prompts:
        print(write_prompts(os.path.join(a.out, "prompts.txt"), a.prompts, a.seed + 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
