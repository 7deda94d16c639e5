"""Synthetic sea scenes with dark oil slicks and their true masks, for tests and demos."""

from __future__ import annotations

import io
import math
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter


def make_scene(width: int, height: int, seed: int, slicks: int = 2
               ) -> tuple[Image.Image, Image.Image]:
    """A speckled grey sea with `slicks` dark elongated slicks; returns (image, true mask).

    Both are mode L and width x height; the mask is 0 (sea) / 255 (oil).
    """
    rng = random.Random(seed)
    noise = Image.effect_noise((width, height), 28.0)  # Gaussian around 128
    sea = ImageChops.add(noise, Image.new("L", (width, height), 20), scale=1.0)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(slicks):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        length = rng.uniform(0.15, 0.35) * min(width, height)
        thickness = length * rng.uniform(0.12, 0.3)
        angle = rng.uniform(0, math.pi)
        draw.polygon(_ellipse(cx, cy, length, thickness, angle), fill=255)
    dark = sea.point(lambda v: int(v * 0.35))
    image = Image.composite(dark, sea, mask).filter(ImageFilter.GaussianBlur(0.6))
    return image, mask


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float,
             points: int = 48) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    out = []
    for i in range(points):
        t = 2 * math.pi * i / points
        x, y = a * math.cos(t), b * math.sin(t)
        out.append((cx + x * cos - y * sin, cy + x * sin + y * cos))
    return out


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_zip(path: Path, count: int, size: tuple[int, int] = (256, 256), seed: int = 0,
              with_masks: bool = False) -> list[str]:
    """A zip of `count` scenes named scene_000.png …; masks beside them when asked."""
    names = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            image, mask = make_scene(*size, seed=seed + i)
            name = f"scene_{i:03d}.png"
            zf.writestr(name, png_bytes(image))
            if with_masks:
                zf.writestr(f"truth/scene_{i:03d}_mask.png", png_bytes(mask))
            names.append(name)
    return names
