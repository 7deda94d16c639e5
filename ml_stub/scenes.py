"""Synthetic SAR-like sea scenes with their true oil masks, for tests, the demo and bench/.

A scene is built in linear backscatter (intensity):
- the sea: a wind gradient across the scene plus slow variations (a few dB);
- oil slicks: elongated, slightly bent bands that damp the backscatter by 5 to 11 dB, with
  sharp edges; these, and only these, are the truth;
- look-alikes (optional): large diffuse low-wind areas, damped by 1.5 to 3 dB with soft
  edges, blob-shaped, which a good detector rejects;
- ships (optional): a few bright points;
- speckle: multiplicative, gamma-distributed with `looks` looks.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class Scene:
    """intensity: linear backscatter, float32, shape (height, width). truth: bool, oil."""

    intensity: np.ndarray
    truth: np.ndarray


def _db(value: np.ndarray | float) -> np.ndarray:
    return np.power(10.0, np.asarray(value) / 10.0)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _slick(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, scale: float
           ) -> np.ndarray:
    """An elongated, slightly bent band at a random place and angle."""
    height, width = yy.shape
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    length = rng.uniform(0.12, 0.35) * scale
    thickness = length / rng.uniform(3.0, 8.0)
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    wave = u / length * np.pi * rng.uniform(0.5, 1.5)
    bend = rng.uniform(-0.25, 0.25) * thickness * np.sin(wave)
    # Thicker in the middle, thinning towards both ends, as a drifting slick does.
    taper = np.sqrt(np.clip(1 - (u / length) ** 2, 0, 1))
    return np.asarray(np.abs(v - bend) <= thickness * taper)


def _lookalike(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, scale: float
               ) -> np.ndarray:
    """A large, roundish low-wind area with a soft edge: a weight in 0..1."""
    height, width = yy.shape
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    radius = rng.uniform(0.12, 0.25) * scale
    aspect = rng.uniform(1.0, 1.6)
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    distance = np.sqrt((u / aspect) ** 2 + v**2) / radius
    return np.asarray(np.clip(1.5 - distance, 0, 1), dtype=np.float32)  # a soft edge


def make_scene(width: int, height: int, seed: int, slicks: int | None = None,
               lookalikes: int | None = None, ships: int | None = None, looks: int = 4
               ) -> Scene:
    """A seeded scene; counts left None are drawn (1-3 slicks, 0-2 look-alikes, 0-4 ships).

    slicks=0 gives a clean sea.
    """
    rng = np.random.default_rng(seed)
    slicks = int(rng.integers(1, 4)) if slicks is None else slicks
    lookalikes = int(rng.integers(0, 3)) if lookalikes is None else lookalikes
    ships = int(rng.integers(0, 5)) if ships is None else ships
    yy, xx = _grid(height, width)
    scale = float(min(width, height))

    direction = rng.uniform(0, 2 * np.pi)
    gradient_db = rng.uniform(1.0, 3.0) * ((np.cos(direction) * xx / width)
                                           + (np.sin(direction) * yy / height) - 0.5)
    slow = ndimage.gaussian_filter(rng.standard_normal((height, width)).astype(np.float32),
                                   sigma=scale / 10)
    slow *= 1.0 / max(float(slow.std()), 1e-6)  # about 1 dB of slow variation
    sea_db = gradient_db + slow

    damping_db = np.zeros((height, width), np.float32)
    for _ in range(lookalikes):
        damping_db = np.maximum(damping_db,
                                _lookalike(yy, xx, rng, scale) * rng.uniform(1.5, 3.0))
    truth = np.zeros((height, width), bool)
    for _ in range(slicks):
        band = _slick(yy, xx, rng, scale)
        truth |= band
        damping_db = np.where(band, np.maximum(damping_db, rng.uniform(5.0, 11.0)), damping_db)

    sigma0 = _db(sea_db - damping_db).astype(np.float32)
    for _ in range(ships):
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        sigma0[max(0, y - 1):y + 2, max(0, x - 1):x + 2] *= float(_db(15.0))
    speckle = rng.gamma(looks, 1.0 / looks, size=(height, width)).astype(np.float32)
    return Scene(intensity=sigma0 * speckle, truth=truth)


def to_uint8(intensity: np.ndarray) -> np.ndarray:
    """An 8-bit amplitude quick-look, as SAR scenes are often shared: sea around 100."""
    amplitude = np.sqrt(intensity / float(np.median(intensity)))
    return np.clip(amplitude * 100.0, 0, 255).astype(np.uint8)


def to_uint16(intensity: np.ndarray) -> np.ndarray:
    """A 16-bit amplitude product: sea around 10,000."""
    amplitude = np.sqrt(intensity / float(np.median(intensity)))
    return np.clip(amplitude * 10_000.0, 0, 65_535).astype(np.uint16)


def encode(array: np.ndarray, fmt: str) -> bytes:
    """PNG or TIFF bytes of a 2-D array (uint8, uint16 or float32)."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        return encode(image, "PNG")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def scene_png(width: int, height: int, seed: int, **kwargs: int) -> bytes:
    """An 8-bit PNG of a seeded scene."""
    return png_bytes(to_uint8(make_scene(width, height, seed, **kwargs).intensity))


def write_zip(path: Path, count: int, size: tuple[int, int] = (256, 256), seed: int = 0,
              with_masks: bool = False, tiff_every: int = 0) -> dict[str, float]:
    """A zip of `count` scenes named scene_000.png …; every `tiff_every`-th one a 16-bit
    TIFF instead. With `with_masks`, the true masks beside them as truth/<name>.png.
    Returns each scene's true oil fraction by name."""
    truth: dict[str, float] = {}
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            scene = make_scene(*size, seed=seed + i)
            if tiff_every and i % tiff_every == tiff_every - 1:
                name = f"scene_{i:03d}.tif"
                zf.writestr(name, encode(to_uint16(scene.intensity), "TIFF"))
            else:
                name = f"scene_{i:03d}.png"
                zf.writestr(name, encode(to_uint8(scene.intensity), "PNG"))
            if with_masks:
                mask = (scene.truth * 255).astype(np.uint8)
                zf.writestr(f"truth/scene_{i:03d}.png", encode(mask, "PNG"))
            truth[name] = float(scene.truth.mean())
    return truth
