"""Dice on masks and straight from RLE strings."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import rle
from pipeline.errors import RLEError
from pipeline.metrics import dice, dice_rle


def blobs(shape, n, seed):
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    mask = np.zeros(shape, np.uint8)
    for _ in range(n):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 12)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return mask


def test_dice_known_values():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0  # both empty
    a[0, :2] = 1
    assert dice(a, b) == 0.0
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(2 * 1 / 4)
    assert dice(a * 255, b) == pytest.approx(0.5)  # nonzero = foreground
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:3])


@pytest.mark.parametrize("seed", range(8))
def test_dice_rle_equals_dice_on_decoded_masks(seed):
    shape = (53, 71)
    a, b = blobs(shape, seed % 5, seed), blobs(shape, 4, seed + 50)
    if seed == 0:
        b = a.copy()
    ra, rb = rle.encode(a), rle.encode(b)
    expected = dice(rle.decode(ra, shape), rle.decode(rb, shape))
    assert expected == pytest.approx(dice(a, b))
    assert dice_rle(ra, rb, shape) == pytest.approx(expected, abs=1e-12)
    assert dice_rle(rle.parse(ra), rle.parse(rb), shape) == pytest.approx(
        expected, abs=1e-12
    )


def test_dice_rle_empty_cases():
    shape = (10, 10)
    assert dice_rle("", "", shape) == 1.0
    assert dice_rle(float("nan"), None, shape) == 1.0
    assert dice_rle("1 5", "", shape) == 0.0
    assert dice_rle("1 5", "1 5", shape) == 1.0


def test_dice_rle_whole_slide_without_masks():
    shape = (30000, 37000)  # 1.1 G pixels: only the runs are ever built
    cols = np.arange(0, 37000, 2, dtype=np.int64)
    truth = np.stack([cols * 30000 + 100, np.full(cols.size, 200)], axis=1)
    pred = truth + [50, 0]  # every run shifted down 50 px: overlap 150 of 200
    score = dice_rle(rle.format_runs(pred), rle.format_runs(truth), shape)
    assert score == pytest.approx(150 / 200)


def test_dice_rle_names_the_bad_source():
    with pytest.raises(RLEError, match="submission.csv row 2"):
        dice_rle("1 5", "1 2 3", (10, 10), source_b="submission.csv row 2")
    with pytest.raises(RLEError, match="truth: run 0"):
        dice_rle("99 5", "1 2", (10, 10), source_a="truth")
