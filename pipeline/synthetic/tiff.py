"""Writing one slide as a tiled RGB TIFF, rendered tile by tile (:func:`write_synthetic_slide`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from shapely.geometry import Polygon

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError
from pipeline.progress import get_logger, progress
from pipeline.synthetic.plan import SlidePlan, plan_slide
from pipeline.synthetic.render import render_tile

log = get_logger(__name__)

PathLike = str | os.PathLike[str]

TILE = 512
JPEG_QUALITY = 90


_COMPRESSIONS = {
    "jpeg": "jpeg",
    "lzw": "lzw",
    "deflate": "zlib",
    "zlib": "zlib",
    "zstd": "zstd",
    "none": None,
    "raw": None,
}


def _compression(compression: str | None) -> tuple[str | None, dict[str, Any] | None]:
    key = "none" if compression is None else str(compression).lower()
    if key not in _COMPRESSIONS:
        raise ConfigError(None, f"unknown compression {compression!r} (one of {', '.join(_COMPRESSIONS)})")
    name = _COMPRESSIONS[key]
    # JPEG stays in RGB (no YCbCr 4:2:0), so every decoder (tifffile, GDAL) gives the same pixels
    return name, ({"level": JPEG_QUALITY, "outcolorspace": "RGB"} if name == "jpeg" else None)


def _level_shapes(height: int, width: int, pyramid: bool, tile: int) -> list[tuple[int, int, int]]:
    """(downsample, height, width) of level 0 and, with ``pyramid``, halvings down to ~one tile."""
    levels = [(1, height, width)]
    while pyramid and max(levels[-1][1], levels[-1][2]) > tile:
        d = levels[-1][0] * 2
        levels.append((d, -(-height // d), -(-width // d)))
    return levels


def _write_tiff(plan: SlidePlan, path: PathLike, tile: int, compression: str | None, pyramid: bool) -> None:
    if tile <= 0 or tile % 16:
        raise ConfigError(None, f"tile size must be a positive multiple of 16, got {tile}")
    codec, codec_args = _compression(compression)
    levels = _level_shapes(plan.height, plan.width, pyramid, tile)
    bigtiff = plan.height * plan.width * 3 >= 2**31
    path = Path(path)

    def tiles(scale: int, h: int, w: int) -> Iterator[np.ndarray]:
        grid = [(ty, tx) for ty in range(0, h, tile) for tx in range(0, w, tile)]
        for ty, tx in progress(grid, total=len(grid), desc=f"{path.name} level x{scale}", logger=log):
            yield render_tile(plan, ty, tx, min(tile, h - ty), min(tile, w - tx), scale=float(scale))

    common = dict(
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression=codec,
        compressionargs=codec_args,
        subsampling=(1, 1) if codec == "jpeg" else None,
        maxworkers=1,
        resolution=(20000.0, 20000.0),
        resolutionunit="CENTIMETER",
    )  # 0.5 um / px
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            _, h, w = levels[0]
            tif.write(tiles(1, h, w), shape=(h, w, 3), subifds=len(levels) - 1 or None, **common)
            for d, h, w in levels[1:]:
                tif.write(tiles(d, h, w), shape=(h, w, 3), subfiletype=1, **common)


def write_synthetic_slide(
    path: PathLike,
    height: int,
    width: int,
    seed: int,
    tile: int = TILE,
    compression: str | None = "jpeg",
    pyramid: bool = False,
) -> list[Polygon]:
    """Write one synthetic slide as a tiled RGB TIFF; return its glomerulus polygons (x, y).

    Memory is one tile plus the plan whatever the size. ``pyramid`` adds halved levels as
    SubIFDs (rendered from the plan at each scale). ``compression``: jpeg (quality 90,
    photometric RGB, no chroma subsampling), lzw, deflate, zstd or none.
    """
    plan = plan_slide(height, width, seed)
    _write_tiff(plan, path, tile, compression, pyramid)
    return plan.polygons()
