"""Dice, on masks and straight from RLE strings.

``dice_rle`` never builds a mask: it intersects the two run lists, so a
whole-slide prediction is scored against ``train.csv`` in memory proportional
to the number of runs, not to the slide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import rle

__all__ = ["dice", "dice_from_counts", "dice_rle"]


def dice_from_counts(intersection: int, predicted: int, truth: int) -> float:
    """2|A∩B| / (|A| + |B|) from pixel counts; 1.0 when both masks are empty (nothing to find, nothing found)."""
    total = predicted + truth
    return 1.0 if total == 0 else 2.0 * intersection / total


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two masks (nonzero = foreground); 1.0 if both are empty."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"dice: masks differ in shape, {a.shape} vs {b.shape}")
    a, b = a != 0, b != 0
    return dice_from_counts(int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b)))


def dice_rle(
    a: Any,
    b: Any,
    shape: tuple[int, int],
    source_a: str | None = None,
    source_b: str | None = None,
) -> float:
    """Dice of two RLE strings (or run arrays) of a ``shape`` slide, from the runs alone.

    Strings are validated by :func:`pipeline.rle.parse` (RLEError names
    ``source_a`` / ``source_b``); NaN, None and "" are empty masks; both empty -> 1.0.
    """
    runs_a = a if isinstance(a, np.ndarray) else rle.parse(a, shape, source_a)
    runs_b = b if isinstance(b, np.ndarray) else rle.parse(b, shape, source_b)
    return dice_from_counts(rle.intersection_area(runs_a, runs_b), rle.area(runs_a), rle.area(runs_b))
