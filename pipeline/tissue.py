"""Tissue detection at low resolution: HSV saturation, Otsu, a little morphology.

Stained tissue is coloured and glass is grey-white, so the saturation channel
separates them; Otsu picks the split per slide. A floor (``min_saturation``)
keeps a blank slide blank instead of splitting its noise in two. The mask lives
at ~1/``downsample`` of the slide (a pyramid level when there is one) and is what
the tile grid and the predictor use to skip glass.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.atomic import atomic_path
from pipeline.errors import DataError
from pipeline.progress import get_logger

if TYPE_CHECKING:
    from pipeline.config import Config, TissueConfig
    from pipeline.slides import SlideReader

log = get_logger(__name__)

MIN_PIXELS = 64  # fewer tissue pixels than this: per-slide statistics use the whole thumbnail
HIST_BINS = 256
GREY_SATURATION = 0.02  # 99 % of a thumbnail below this: a greyscale slide (JPEG noise aside)


@dataclass
class TissueMask:
    """Boolean tissue mask at ``1/downsample`` of the slide, with its RGB thumbnail."""

    mask: np.ndarray  # bool (h, w)
    downsample: float  # level-0 px per mask px
    thumbnail: np.ndarray  # uint8 (h, w, 3)
    thumbnail_from_mask: bool = False  # no thumbnail file: grey drawn from the mask (no colours to measure)
    _integral: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fraction(self) -> float:
        """Tissue fraction of the whole mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _sat(self) -> np.ndarray:
        """Summed-area table of the mask, so any window fraction costs O(1)."""
        if self._integral is None:
            sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
            np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
            self._integral = sat
        return self._integral

    def _cells(self, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask cells [lo, hi) touched by full-res spans [start, start + length)."""
        d = self.downsample
        lo = np.floor(np.asarray(start, np.float64) / d + 1e-9).astype(np.int64)
        hi = np.ceil((np.asarray(start, np.float64) + np.asarray(length, np.float64)) / d - 1e-9)
        hi = np.maximum(hi.astype(np.int64), lo + 1)
        return lo, hi

    def window_fractions(self, y0, x0, height, width) -> np.ndarray:
        """Vectorised :meth:`window_fraction` over arrays of full-res windows.

        Parts of a window outside the slide count as glass (they are padding).
        """
        y0, x0, height, width = np.broadcast_arrays(
            np.asarray(y0), np.asarray(x0), np.asarray(height), np.asarray(width)
        )
        r0, r1 = self._cells(y0, height)
        c0, c1 = self._cells(x0, width)
        h, w = self.mask.shape
        cr0, cr1 = np.clip(r0, 0, h), np.clip(r1, 0, h)
        cc0, cc1 = np.clip(c0, 0, w), np.clip(c1, 0, w)
        sat = self._sat()
        inside = sat[cr1, cc1] - sat[cr0, cc1] - sat[cr1, cc0] + sat[cr0, cc0]
        return inside / ((r1 - r0) * (c1 - c0)).astype(np.float64)

    def window_fraction(self, y0: int, x0: int, height: int, width: int) -> float:
        """Tissue fraction of a full-resolution window (outside the slide = glass)."""
        return float(self.window_fractions(y0, x0, height, width))


def otsu_threshold(values: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Otsu's threshold on a 256-bin histogram; foreground is ``values >= threshold``.

    Returns the upper edge of the last background bin, so the split is exact with
    respect to the binning. With a single occupied bin there is nothing to split and
    the upper edge of that bin is returned (nothing is foreground).
    """
    lo, hi = value_range
    v = np.asarray(values, np.float64).ravel()
    hist, _ = np.histogram(np.clip(v, lo, hi), bins=HIST_BINS, range=(lo, hi))
    centres = lo + (np.arange(HIST_BINS) + 0.5) * (hi - lo) / HIST_BINS
    w0 = np.cumsum(hist).astype(np.float64)
    total = w0[-1]
    if total == 0:
        return hi
    s0 = np.cumsum(hist * centres)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = s0 / w0
        m1 = (s0[-1] - s0) / w1
        between = w0 * w1 * (m0 - m1) ** 2
    between[~((w0 > 0) & (w1 > 0))] = -1.0
    if between.max() < 0:  # one occupied bin
        idx = int(np.flatnonzero(hist)[-1])
    else:
        idx = int(np.argmax(between))
    return lo + (idx + 1) * (hi - lo) / HIST_BINS


def hsv_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value (float32, 0..1) of an RGB uint8 image."""
    rgb = np.asarray(rgb)
    mx = rgb.max(axis=-1).astype(np.float32)
    mn = rgb.min(axis=-1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0).astype(np.float32)
    return sat, mx / 255.0


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def tissue_from_thumbnail(thumbnail: np.ndarray, cfg: TissueConfig) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a low-res RGB image and the saturation threshold used."""
    sat, val = hsv_saturation_value(thumbnail)
    if cfg.saturation_threshold is None:
        threshold = max(otsu_threshold(sat), cfg.min_saturation)
    else:
        threshold = float(cfg.saturation_threshold)
    mask = (sat >= threshold) & (val <= cfg.max_value)
    if cfg.close_px > 0 and mask.any():
        pad = cfg.close_px
        padded = np.pad(mask, pad, mode="edge")  # no erosion artefacts at the image border
        padded = ndimage.binary_closing(padded, structure=_disk(cfg.close_px))
        mask = padded[pad:-pad, pad:-pad]
    if mask.any():
        mask = ndimage.binary_fill_holes(mask)
    return mask.astype(bool), float(threshold)


def mask_downsample(mask_shape: tuple[int, int], slide_shape: tuple[int, int], source=None) -> float:
    """Downsample of a low-res mask of ``mask_shape`` made as ``ceil(slide / d)``.

    Picks an integer ``d`` consistent with both axes when there is one (the usual
    case), else the mean ratio; raises DataError when the sizes cannot belong together.
    """
    (h, w), (H, W) = mask_shape, slide_shape
    if h <= 0 or w <= 0 or H <= 0 or W <= 0:
        raise DataError(source, f"empty tissue mask {mask_shape} or slide {slide_shape}")
    # ceil(H / d) == h  <=>  H / h <= d < H / (h - 1)
    lo = max(H / h, W / w)
    hi = min(H / (h - 1) if h > 1 else math.inf, W / (w - 1) if w > 1 else math.inf)
    if lo < hi:
        d = math.ceil(lo - 1e-9)
        return float(d) if d < hi else float(lo)
    ry, rx = H / h, W / w
    if abs(ry - rx) <= 0.02 * max(ry, rx) + 1.0:  # a pyramid level rounded differently
        return float((ry + rx) / 2)
    raise DataError(
        source,
        f"tissue mask of {h} x {w} does not match a slide of {H} x {W} "
        f"(one axis ~{ry:.1f}x, the other ~{rx:.1f}x)",
    )


def detect_tissue(reader: SlideReader, cfg: TissueConfig, whole_image: bool = False) -> TissueMask:
    """Tissue mask of a slide from its ~1/``cfg.downsample`` image (bounded by that image).

    ``whole_image``: every pixel is tissue (patch sets: an image is all region of interest,
    and dark-field images have no stain saturation to detect).
    """
    thumb = np.ascontiguousarray(reader.read_region_downsampled(int(cfg.downsample)))
    if whole_image:
        mask, threshold = np.ones(thumb.shape[:2], bool), 0.0
    else:
        mask, threshold = tissue_from_thumbnail(thumb, cfg)
    downsample = mask_downsample(mask.shape, tuple(reader.shape), getattr(reader, "path", None))
    log.info(
        "%s: tissue %.1f%% of %d x %d mask (saturation >= %.3f)",
        getattr(reader, "path", "slide"),
        100.0 * mask.mean(),
        mask.shape[0],
        mask.shape[1],
        threshold,
    )
    if not mask.any():
        log.warning("%s: no tissue detected: %s", getattr(reader, "path", "slide"), _no_tissue_cause(thumb, threshold))
    return TissueMask(mask=mask, downsample=downsample, thumbnail=thumb)


def _no_tissue_cause(thumbnail: np.ndarray, threshold: float) -> str:
    """The likely reason a slide has no tissue, for the warning: every later stage skips it."""
    sat, _ = hsv_saturation_value(thumbnail)
    empty = "its tiles and predictions will be empty"
    if sat.size == 0 or float(np.quantile(sat, 0.99)) < GREY_SATURATION:
        return (f"the slide is greyscale (no colour) and tissue is found by the saturation of its stain; {empty} "
                f"(tissue.saturation_threshold: 0 takes every pixel darker than tissue.max_value as tissue)")
    return (f"nothing stained enough (saturation >= {threshold:.3f}, not brighter than tissue.max_value): "
            f"blank glass or a very faint stain; {empty} (check the slide, or lower tissue.min_saturation)")


def _write_png(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def thumbnail_path(mask_png: str | os.PathLike[str]) -> Path:
    """Conventional thumbnail next to a mask: ``{id}.png`` -> ``{id}.thumb.png``."""
    p = Path(mask_png)
    return p.with_name(p.stem + ".thumb.png")


def save_tissue(tissue: TissueMask, mask_png, thumbnail_png) -> None:
    """Write the mask (8-bit, 0/255) and the thumbnail (RGB) as PNGs, each atomically."""
    _write_png(np.where(tissue.mask, 255, 0).astype(np.uint8), mask_png)
    _write_png(np.ascontiguousarray(tissue.thumbnail, dtype=np.uint8), thumbnail_png)


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise DataError(path, "tissue mask not found (run the tissue stage first)") from None
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read PNG: {err}") from err


def load_tissue(mask_png, slide_shape: tuple[int, int], thumbnail_png=None) -> TissueMask:
    """Read a mask PNG written by :func:`save_tissue`; downsample derived from the sizes.

    The thumbnail is read from ``thumbnail_png`` or the conventional ``{id}.thumb.png``
    next to the mask when present, else drawn from the mask (grey tissue on white).
    """
    mask_png = Path(mask_png)
    mask = _read_png(mask_png, "L") > 127
    downsample = mask_downsample(mask.shape, tuple(slide_shape), mask_png)
    thumb_path = Path(thumbnail_png) if thumbnail_png is not None else thumbnail_path(mask_png)
    thumb = None
    if thumb_path.exists():
        thumb = _read_png(thumb_path, "RGB")
        if thumb.shape[:2] != mask.shape:
            raise DataError(thumb_path, f"thumbnail {thumb.shape[:2]} does not match mask {mask.shape}")
    if thumb is None:
        drawn = np.repeat(np.where(mask, 160, 255).astype(np.uint8)[..., None], 3, axis=2)
        return TissueMask(mask=mask, downsample=downsample, thumbnail=drawn, thumbnail_from_mask=True)
    return TissueMask(mask=mask, downsample=downsample, thumbnail=thumb)


def run_tissue(slide_path, mask_png, thumbnail_png, config: Config, whole_image: bool = False) -> None:
    """Stage entry point: detect tissue on one slide (or take all of it), write mask and thumbnail PNGs."""
    from pipeline.slides import open_slide

    with open_slide(slide_path, backend=config.slides.backend) as reader:
        tissue = detect_tissue(reader, config.tissue, whole_image)
    save_tissue(tissue, mask_png, thumbnail_png)


def tissue_rows(pixels: np.ndarray, mask: np.ndarray | None, image_shape: tuple[int, ...]) -> np.ndarray:
    """The rows of ``pixels`` (one per image pixel) inside the tissue ``mask``, or all of them.

    All of them without a mask, or when it holds fewer than :data:`MIN_PIXELS` pixels (a
    blank slide), so that per-slide statistics stay defined.
    """
    if mask is None:
        return pixels
    keep = np.asarray(mask, bool).reshape(-1)
    if keep.shape[0] != pixels.shape[0]:
        raise ValueError(f"tissue mask of {np.shape(mask)} does not match image {tuple(image_shape)}")
    return pixels[keep] if int(keep.sum()) >= MIN_PIXELS else pixels
