"""Tissue detection: Otsu, blank glass, morphology, PNG round trip, window fractions."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.config import Config, TissueConfig
from pipeline.errors import DataError
from pipeline.tissue import (
    TissueMask,
    detect_tissue,
    hsv_saturation_value,
    load_tissue,
    mask_downsample,
    otsu_threshold,
    run_tissue,
    save_tissue,
    tissue_from_thumbnail,
)

GLASS = (236, 236, 232)
STAIN = (196, 120, 178)  # H&E-ish pink/purple


def write_tiff(path, rgb: np.ndarray, tile: int = 256) -> None:
    """A tiled RGB TIFF like a (one-level) slide."""
    tifffile.imwrite(path, rgb, tile=(tile, tile), photometric="rgb", compression="zlib")


def slide_image(height: int, width: int, boxes, seed: int = 0, noise: int = 3) -> np.ndarray:
    """Glass with a little sensor noise and stained rectangles (y0, x0, y1, x1)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    for y0, x0, y1, x1 in boxes:
        img[y0:y1, x0:x1] = STAIN
    jitter = rng.integers(-noise, noise + 1, size=img.shape)
    return np.clip(img.astype(np.int16) + jitter, 0, 255).astype(np.uint8)


def test_otsu_separates_two_saturation_levels():
    rng = np.random.default_rng(1)
    low = np.clip(rng.normal(0.06, 0.02, 6000), 0, 1)
    high = np.clip(rng.normal(0.45, 0.05, 4000), 0, 1)
    values = np.concatenate([low, high])
    t = otsu_threshold(values)
    assert 0.06 < t < 0.45
    assert (low < t).all() and (high >= t).all()  # the classes share no value: Otsu splits in the gap


def test_otsu_is_exact_on_two_values_and_degenerate_on_one():
    values = np.array([0.1] * 30 + [0.7] * 70)
    t = otsu_threshold(values)
    assert 0.1 < t <= 0.7 and ((values >= t) == (values == 0.7)).all()
    t1 = otsu_threshold(np.full(50, 0.3))
    assert not (np.full(50, 0.3) >= t1).any()  # nothing to split: nothing is foreground


def test_saturation_of_grey_white_and_colour():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [200, 100, 50], [128, 128, 128]]], np.uint8)
    sat, val = hsv_saturation_value(rgb)
    np.testing.assert_allclose(sat[0], [0.0, 0.0, 0.75, 0.0], atol=1e-6)
    np.testing.assert_allclose(val[0], [1.0, 0.0, 200 / 255, 128 / 255], atol=1e-6)


def test_tissue_mask_closes_small_holes_and_respects_max_value():
    img = slide_image(200, 300, [(40, 50, 160, 250)], noise=2)
    img[90:94, 140:143] = GLASS  # a small gap inside the tissue
    img[0:20, 0:20] = (255, 248, 252)  # very bright faint tint: never tissue (max_value)
    cfg = TissueConfig(close_px=2)
    mask, threshold = tissue_from_thumbnail(img, cfg)
    assert cfg.min_saturation <= threshold < 0.35
    assert mask[40:160, 50:250].all()  # hole filled
    assert not mask[:40].any() and not mask[160:].any() and not mask[:, :50].any()
    fixed = TissueConfig(saturation_threshold=0.01, max_value=0.9, close_px=0)
    m2, t2 = tissue_from_thumbnail(img, fixed)
    assert t2 == 0.01 and not m2[0:20, 0:20].any()


def test_blank_slide_gives_empty_mask(tmp_path):
    img = slide_image(1024, 1280, [], noise=6)
    sat, _ = hsv_saturation_value(img)
    t = otsu_threshold(sat)
    assert (sat >= t).mean() > 0.01  # plain Otsu would call part of the noise tissue...
    path = tmp_path / "blank.tiff"
    write_tiff(path, img)
    from pipeline.slides import open_slide

    with open_slide(path) as reader:
        tissue = detect_tissue(reader, TissueConfig(downsample=8))
    assert tissue.mask.shape == (128, 160)
    assert not tissue.mask.any()  # ...the min_saturation floor keeps the glass empty
    assert tissue.window_fraction(0, 0, 1024, 1280) == 0.0


def test_detect_tissue_on_a_tiff_finds_the_stained_region(tmp_path):
    height, width, d = 1500, 2100, 16
    box = (320, 480, 1120, 1600)
    path = tmp_path / "slide.tiff"
    write_tiff(path, slide_image(height, width, [box]))
    from pipeline.slides import open_slide

    with open_slide(path) as reader:
        tissue = detect_tissue(reader, TissueConfig(downsample=d))
    assert tissue.mask.shape == (-(-height // d), -(-width // d))
    assert tissue.thumbnail.shape == tissue.mask.shape + (3,) and tissue.thumbnail.dtype == np.uint8
    assert tissue.downsample == d
    y0, x0, y1, x1 = box
    inside = tissue.mask[y0 // d + 1 : y1 // d - 1, x0 // d + 1 : x1 // d - 1]
    assert inside.all()
    outside = tissue.mask.copy()
    outside[y0 // d - 1 : y1 // d + 2, x0 // d - 1 : x1 // d + 2] = False
    assert not outside.any()
    assert tissue.window_fraction(y0, x0, y1 - y0, x1 - x0) > 0.97
    assert tissue.window_fraction(0, 0, 256, 256) == 0.0


def test_round_trip_through_png(tmp_path):
    rng = np.random.default_rng(3)
    mask = rng.random((47, 59)) > 0.6
    thumb = rng.integers(0, 256, (47, 59, 3), dtype=np.uint8)
    tissue = TissueMask(mask=mask, downsample=32.0, thumbnail=thumb)
    mask_png, thumb_png = tmp_path / "t" / "abc.png", tmp_path / "t" / "abc.thumb.png"
    save_tissue(tissue, mask_png, thumb_png)
    assert sorted(p.name for p in mask_png.parent.iterdir()) == ["abc.png", "abc.thumb.png"]  # no temporaries
    with Image.open(mask_png) as im:
        assert im.mode == "L" and im.size == (59, 47)
    slide_shape = (47 * 32 - 5, 59 * 32 - 31)  # ceil(H / 32) == 47, ceil(W / 32) == 59
    back = load_tissue(mask_png, slide_shape)
    assert back.downsample == 32.0
    np.testing.assert_array_equal(back.mask, mask)
    np.testing.assert_array_equal(back.thumbnail, thumb)
    for window in [(0, 0, 512, 512), (100, 700, 1536, 1536), (1400, 1800, 64, 64)]:
        assert back.window_fraction(*window) == tissue.window_fraction(*window)
    alone = tmp_path / "alone.png"
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(alone)
    drawn = load_tissue(alone, slide_shape)  # no thumbnail next to it: drawn from the mask
    assert drawn.thumbnail.shape == (47, 59, 3)


def test_load_tissue_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        load_tissue(tmp_path / "nope.png", (1000, 1000))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_tissue(bad, (1000, 1000))
    ok = tmp_path / "m.png"
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(ok)
    with pytest.raises(DataError, match="does not match"):
        load_tissue(ok, (320, 320))  # 32x on one axis, 16x on the other


def test_mask_downsample_from_sizes():
    assert mask_downsample((938, 1157), (30000, 37000)) == 32.0
    assert mask_downsample((1, 1), (20, 30)) == 30.0
    assert mask_downsample((100, 100), (1000, 1000)) == 10.0


def test_window_fraction_counts_outside_as_glass():
    mask = np.zeros((4, 6), bool)
    mask[0:2, 0:3] = True
    tm = TissueMask(mask=mask, downsample=10.0, thumbnail=np.zeros((4, 6, 3), np.uint8))
    assert tm.window_fraction(0, 0, 20, 30) == 1.0
    assert tm.window_fraction(0, 0, 40, 60) == 0.25
    assert tm.window_fraction(0, 0, 20, 60) == 0.5
    assert tm.window_fraction(-20, -30, 40, 60) == 0.25  # three quarters outside the slide
    assert tm.window_fraction(10, 20, 10, 10) == 1.0
    assert tm.window_fraction(15, 25, 10, 10) == 0.25  # partial cells count whole
    np.testing.assert_array_equal(tm.window_fractions([0, 20], [0, 30], 20, 30), [1.0, 0.0])


def test_run_tissue_writes_both_pngs(tmp_path):
    path = tmp_path / "s.tiff"
    write_tiff(path, slide_image(640, 896, [(100, 100, 500, 600)]))
    cfg = Config(tissue=TissueConfig(downsample=32))
    run_tissue(path, tmp_path / "out" / "s.png", tmp_path / "out" / "s.thumb.png", cfg)
    back = load_tissue(tmp_path / "out" / "s.png", (640, 896))
    assert back.mask.shape == (20, 28) and back.downsample == 32.0
    assert 0.2 < back.mask.mean() < 0.5
    with Image.open(tmp_path / "out" / "s.thumb.png") as im:
        assert im.mode == "RGB" and im.size == (28, 20)


def test_real_svs_has_tissue_and_glass(shared_data):
    from pipeline.slides import open_slide

    with open_slide(shared_data / "wsi" / "CMU-1-Small-Region.svs") as reader:
        tissue = detect_tissue(reader, TissueConfig(downsample=16))
    assert tissue.mask.shape == (-(-2967 // 16), -(-2220 // 16))  # 2220 wide, 2967 high
    assert 0.1 < tissue.mask.mean() < 0.95  # an H&E section on glass: both present
