"""A small synthetic nuclei set in the Data Science Bowl 2018 layout (``data_layout: dsb2018``).

What the nuclei U-Nets had to handle, on purpose:

* **touching objects**: nuclei come in clusters of 2-4 placed so that neighbours touch or
  overlap by a few pixels (each mask file still holds one whole nucleus, the later one
  winning where they overlap), plus isolated ones;
* **dark-field images**: about a third are fluorescence-like (bright nuclei on a black
  background), the rest bright-field (purple nuclei on a pale background), so a model
  needs ``model.input_norm: invert_dark`` (or to learn both looks);
* slightly elliptic nuclei 14-26 px across with a textured inside, blur and noise.

Layout: ``{split}/{id}/images/{id}.png`` (RGBA, as the DSB images are) and
``{split}/{id}/masks/{k}.png`` (0 / 255), for ``train`` and ``test`` (test masks are the truth
the workflow scores). Deterministic from ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.atomic import atomic_path
from pipeline.progress import get_logger

log = get_logger(__name__)

#: Bright-field nucleus and background colours (RGB), and the dark-field ones.
BRIGHT_BACKGROUND = np.array([232.0, 220.0, 235.0])
BRIGHT_NUCLEUS = np.array([95.0, 60.0, 140.0])
DARK_BACKGROUND = np.array([8.0, 8.0, 10.0])
DARK_NUCLEUS = np.array([200.0, 205.0, 210.0])


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
    return u * u + v * v <= 1.0


def _nucleus_params(rng: np.random.Generator) -> tuple[float, float, float]:
    r = rng.uniform(7.0, 13.0)
    return r * rng.uniform(0.8, 1.0), r, rng.uniform(0, np.pi)


def plan_nuclei(rng: np.random.Generator, size: int, n_clusters: int, n_single: int) -> list[tuple[float, ...]]:
    """Nuclei as (cy, cx, ry, rx, angle): clusters whose members touch, and isolated ones."""
    nuclei: list[tuple[float, ...]] = []
    for _ in range(n_clusters):
        cy, cx = rng.uniform(24, size - 24, 2)
        ry, rx, angle = _nucleus_params(rng)
        nuclei.append((cy, cx, ry, rx, angle))
        for _ in range(int(rng.integers(1, 4))):
            base = nuclei[-1]
            ry2, rx2, angle2 = _nucleus_params(rng)
            direction = rng.uniform(0, 2 * np.pi)
            # centre distance a little under the sum of the radii: the two touch or overlap slightly
            distance = 0.5 * (base[2] + base[3]) + 0.5 * (ry2 + rx2) - rng.uniform(0.0, 3.0)
            ny, nx = base[0] + distance * np.sin(direction), base[1] + distance * np.cos(direction)
            if 14 <= ny <= size - 14 and 14 <= nx <= size - 14:
                nuclei.append((ny, nx, ry2, rx2, angle2))
    for _ in range(n_single):
        cy, cx = rng.uniform(16, size - 16, 2)
        nuclei.append((cy, cx, *_nucleus_params(rng)))
    return nuclei


def render_nuclei(
    rng: np.random.Generator, size: int, nuclei: list[tuple[float, ...]], dark: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The RGB image and one bool mask per nucleus (later nuclei win where two overlap)."""
    shape = (size, size)
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx, ry, rx, angle) in enumerate(nuclei, start=1):
        labels[_ellipse(shape, cy, cx, ry, rx, angle)] = k
    masks = [labels == k for k in range(1, len(nuclei) + 1)]
    masks = [m for m in masks if m.sum() >= 20]  # nearly hidden nuclei are not objects
    background, nucleus = (DARK_BACKGROUND, DARK_NUCLEUS) if dark else (BRIGHT_BACKGROUND, BRIGHT_NUCLEUS)
    shade = rng.uniform(0.8, 1.2, 3)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), 1.5)
    texture = 0.75 + 0.5 * (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    inside = ndimage.gaussian_filter((labels > 0).astype(np.float32), 0.8)[..., None]
    rims = (labels > 0) & (ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3))
    edges = ndimage.gaussian_filter(rims.astype(np.float32), 0.7)[..., None]  # darker (dark-field: brighter) rims
    colour = nucleus * shade * texture[..., None]
    image = background * (1 - inside) + colour * inside
    image = image + (edges * (40.0 if dark else -40.0))
    image = image + rng.normal(0.0, 4.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _write_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def make_nuclei_dataset(
    out: str | os.PathLike[str], n_train: int = 16, n_test: int = 6, size: int = 256, seed: int = 0
) -> Path:
    """Write the set under ``out`` (``train/`` and ``test/``); returns ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for index in range(count):
            image_id = f"nuc_{split}{index:03d}"
            dark = index % 3 == 2
            nuclei = plan_nuclei(rng, size, n_clusters=int(rng.integers(3, 6)), n_single=int(rng.integers(2, 6)))
            image, masks = render_nuclei(rng, size, nuclei, dark)
            alpha = np.full((size, size, 1), 255, np.uint8)  # the DSB images are RGBA
            folder = out / split / image_id
            _write_png(np.concatenate([image, alpha], axis=2), folder / "images" / f"{image_id}.png")
            for k, mask in enumerate(masks):
                _write_png(np.where(mask, 255, 0).astype(np.uint8), folder / "masks" / f"{image_id}_{k:03d}.png")
    log.info("%s: synthetic nuclei set, %d train + %d test images of %d px", out, n_train, n_test, size)
    return out
