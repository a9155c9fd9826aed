"""Area reduction of slide pixels and masks to model resolution, exact and fast.

Every stage that feeds a model reduces full-resolution pixels by an integer factor (the model
scale: 1536 px windows to 512). Exact block means keep the tiles of training, the windows of
prediction and the decode-once blocks equal pixel for pixel; the fast paths below give the
same numbers as the plain ones, only sooner.
"""

from __future__ import annotations

import cv2  # opencv-python-headless, with albumentations: its INTER_AREA is ~20x NumPy's
import numpy as np


def resize_area(image: np.ndarray, out_size: int | tuple[int, int]) -> np.ndarray:
    """Area-averaged resize of (h, w) or (h, w, c) to ``out_size`` (square, or (oh, ow)).

    Integer images come back in their dtype (rounded block means); bool and float
    images come back as float32 means (fractions for masks). Integer factors are
    exact block means; other factors use OpenCV's INTER_AREA (pixel-area weights).
    """
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    image = np.asarray(image)
    h, w = image.shape[:2]
    if (h, w) == (oh, ow):
        return image.astype(np.float32) if image.dtype == bool else image.copy()
    if _odd_factors(image, oh, ow):
        return _box_reduce(image, h // oh, w // ow)
    src = image.astype(np.float32) if image.dtype == bool else image
    if src.ndim == 2 or src.shape[2] <= 4:  # OpenCV's channel limit
        if src.dtype.kind == "f" and src.dtype != np.float32:
            src = src.astype(np.float32)
        out = cv2.resize(np.ascontiguousarray(src), (ow, oh), interpolation=cv2.INTER_AREA)
        return out.reshape((oh, ow) + image.shape[2:])
    if h % oh or w % ow:
        raise ValueError(f"cannot area-resize {h} x {w} to {oh} x {ow} with more than 4 channels: not an integer factor")
    fy, fx = h // oh, w // ow
    blocks = src.reshape((oh, fy, ow, fx) + src.shape[2:])
    if src.dtype.kind in "ui":
        total = blocks.sum(axis=(1, 3), dtype=np.int64)
        n = fy * fx
        return ((total + n // 2) // n).astype(image.dtype)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _odd_factors(image: np.ndarray, oh: int, ow: int) -> bool:
    """Whether ``image`` is uint8 and shrinks by odd integer factors (the model scale 3 of 1536 -> 512)."""
    h, w = image.shape[:2]
    return (image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] <= 4)
            and oh > 0 and ow > 0 and h % oh == 0 and w % ow == 0 and (h // oh) % 2 == 1 and (w // ow) % 2 == 1)


def _box_reduce(image: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Rounded block means of uint8 ``image`` for odd factors: a box filter sampled at the block centres.

    OpenCV's INTER_AREA has no fast path for odd factors; its separable box filter is 2-3x
    faster, and with an odd block area (fy * fx) a mean never ends in .5, so both round alike:
    the result is exactly INTER_AREA's (and the exact block mean), bit for bit.
    """
    blurred = cv2.blur(np.ascontiguousarray(image), (fx, fy), borderType=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(blurred[fy // 2 :: fy, fx // 2 :: fx])


def mask_fraction(mask: np.ndarray, out_size: int) -> np.ndarray:
    """Fraction of each output pixel's block that ``mask`` (0/1, square) covers, float32.

    Integer factors count the block's pixels exactly: the ``factor`` rows of each block
    are added, then its ``factor`` columns, in small integers (a few passes over the
    mask, ~2x faster than a full-resolution box filter sampled at the block centres);
    others area-resize.
    """
    side = mask.shape[0]
    factor = side // out_size
    if side % out_size or mask.shape != (side, side) or factor > 255:
        return resize_area(mask.astype(bool), out_size)
    counts_dtype = np.uint8 if factor * factor <= np.iinfo(np.uint8).max else np.uint16
    mask = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8, copy=False)  # 0/1 of any dtype
    rows = mask[0::factor].astype(counts_dtype, order="C")  # (out, side): each block's rows summed
    for k in range(1, factor):
        rows += mask[k::factor]
    blocks = rows.reshape(out_size, out_size, factor)
    counts = blocks[:, :, 0].copy()
    for k in range(1, factor):
        counts += blocks[:, :, k]
    return counts.astype(np.float32) / float(factor * factor)


__all__ = ["mask_fraction", "resize_area"]
