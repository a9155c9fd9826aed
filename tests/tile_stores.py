"""Small Zarr tile stores for the training, filter and model tests (made on the fly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from pipeline.input_norm import intensity_stats
from pipeline.stain import tissue_stats
from pipeline.tiles import COLOUR_ATTR, INPUT_ATTR

ENCODER = "tu-mobilenetv3_small_050"  # tiny timm encoder: fast on 2 shared CPU cores


def make_tile_stores(
    root: Path,
    n_slides: int = 3,
    n_pos: int = 8,
    n_tissue: int = 4,
    n_glass: int = 4,
    size: int = 64,
    seed: int = 0,
    max_discs: int = 2,
    gains: dict[int, tuple[float, float, float]] | None = None,
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Zarr tile stores as pipeline/tiles.py writes them, plus their index (slide, tile, y0, x0, tissue, positive).

    Positive tiles hold 1..max_discs dark discs on pink noise; then plain tissue, then glass.
    ``gains`` tints slide ``s`` (RGB gains: another camera). The colour statistics recorded
    are those of the slide's non-glass tiles (the tissue stage takes them from a thumbnail);
    the intensity statistics (``model.input_norm``) those of all its tiles, per channel of the non-glass ones.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    stores, rows = {}, []
    for s in range(n_slides):
        slide = f"slide{s}"
        n = n_pos + n_tissue + n_glass
        images = np.empty((n, size, size, 3), np.uint8)
        masks = np.zeros((n, size, size), np.uint8)
        for i in range(n):
            glass = i >= n_pos + n_tissue
            base, noise = ([245, 244, 246], 3) if glass else ([225, 150, 190], 18)
            img = np.array(base, float) + rng.normal(0, noise, (size, size, 3))
            if i < n_pos:
                for _ in range(rng.integers(1, max_discs + 1)):
                    r = rng.uniform(size * 0.12, size * 0.22)
                    cy, cx = rng.uniform(r, size - r, 2)
                    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                    img[disc] = np.array([110, 40, 120]) + rng.normal(0, 12, (disc.sum(), 3))
                    masks[i][disc] = 1
            if gains and s in gains:
                img = img * np.asarray(gains[s], float)
            images[i] = np.clip(img, 0, 255).astype(np.uint8)
        path = root / f"{slide}.zarr"
        group = zarr.open_group(str(path), mode="w")
        group.attrs[COLOUR_ATTR] = tissue_stats(images[: n_pos + n_tissue]).as_dict()
        tissue_mask = np.arange(n) < n_pos + n_tissue  # per tile: the thumbnail's tissue mask, tile-wise
        group.attrs[INPUT_ATTR] = intensity_stats(images, np.broadcast_to(tissue_mask[:, None, None], (n, size, size))).as_dict()
        group.create_array("images", data=images, chunks=(1, size, size, 3))
        group.create_array("masks", data=masks, chunks=(1, size, size))
        stores[slide] = path
        rows += [
            {
                "slide": slide,
                "tile": i,
                "y0": i * 3 * size,
                "x0": 0,
                "tissue": 0.0 if i >= n_pos + n_tissue else 1.0,
                "positive": float(masks[i].mean()),
            }
            for i in range(n)
        ]
    return pd.DataFrame(rows), stores
