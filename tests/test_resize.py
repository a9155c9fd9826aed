"""Area reduction to model resolution: exact block means, and fast paths equal to the plain ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.resize import mask_fraction, resize_area


def test_resize_area_constant_is_exact():
    for size, out in [(1536, 512), (600, 250), (97, 31)]:
        img = np.full((size, size, 3), (17, 200, 255), np.uint8)
        small = resize_area(img, out)
        assert small.shape == (out, out, 3) and small.dtype == np.uint8
        assert (small == np.array([17, 200, 255], np.uint8)).all()
        f = resize_area(np.full((size, size), 0.25, np.float32), out)
        assert f.dtype == np.float32 and np.allclose(f, 0.25, atol=1e-6)


def test_resize_area_of_3x3_blocks_is_the_block_mean():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    block_mean = img.reshape(3, 3, 4, 3, 3).astype(np.float64).mean(axis=(1, 3))
    small = resize_area(img, (3, 4))
    assert small.dtype == np.uint8
    assert np.abs(small - block_mean).max() <= 0.5  # rounded mean
    np.testing.assert_array_equal(small, np.floor(block_mean + 0.5).astype(np.uint8))
    mask = rng.random((9, 9)) > 0.5
    frac = resize_area(mask, 3)
    np.testing.assert_allclose(frac, mask.reshape(3, 3, 3, 3).mean(axis=(1, 3)), atol=1e-6)


@pytest.mark.parametrize("fy, fx", [(3, 3), (5, 5), (7, 7), (3, 5), (9, 3)])
def test_odd_factors_take_the_box_filter_and_give_the_exact_block_mean(fy, fx):
    """The fast path for odd factors (scale 3: 1536 -> 512) equals INTER_AREA and the exact mean, bit for bit."""
    rng = np.random.default_rng(fy * 10 + fx)
    oh, ow = 37, 41
    for shape in [(oh * fy, ow * fx, 3), (oh * fy, ow * fx), (oh * fy, ow * fx, 4)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        small = resize_area(img, (oh, ow))
        total = img.reshape((oh, fy, ow, fx) + shape[2:]).astype(np.int64).sum(axis=(1, 3))
        n = fy * fx
        np.testing.assert_array_equal(small, ((total + n // 2) // n).astype(np.uint8))
        np.testing.assert_array_equal(small, cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA).reshape(small.shape))
        assert small.flags.c_contiguous and small.flags.owndata  # no view keeping the full-res blur alive


@pytest.mark.parametrize("side, out", [(1536, 512), (768, 256), (512, 256), (400, 100), (97, 31), (1024, 64)])
def test_mask_fraction_counts_each_block_exactly(side, out):
    rng = np.random.default_rng(side)
    mask = (rng.random((side, side)) < 0.3).astype(np.uint8)
    mask[: side // 3, : side // 2] = 1
    got = mask_fraction(mask, out)
    assert got.shape == (out, out) and got.dtype == np.float32
    want = resize_area(mask.astype(bool), out)  # the area-resized float copy it replaces
    np.testing.assert_allclose(got, want, atol=1e-6)
    if side % out == 0:
        f = side // out
        exact = mask.reshape(out, f, out, f).sum(axis=(1, 3)) / (f * f)
        np.testing.assert_array_equal(got, exact.astype(np.float32))
        np.testing.assert_array_equal(mask_fraction(mask.astype(bool), out), got)  # bool masks too
        np.testing.assert_array_equal(mask_fraction(mask.astype(np.int64), out), got)  # and wider integers
        np.testing.assert_array_equal(mask_fraction(np.asfortranarray(mask), out), got)  # and any layout
