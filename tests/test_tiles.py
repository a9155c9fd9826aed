"""Tile grid, centred windows, area resize and the Zarr tile store."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage
from shapely.geometry import Point, box

from pipeline import annotations, rle
from pipeline.config import Config, TilesConfig, TissueConfig
from pipeline.resize import resize_area
from pipeline.tiles import (
    INDEX_COLUMNS,
    centred_windows,
    centres_from_runs,
    extract_tiles,
    open_tile_store,
    read_tile_index,
    run_tiles,
    select_windows,
    tile_grid,
)
from pipeline.tissue import TissueMask, run_tissue

GLASS = (236, 236, 232)
STAIN = (196, 120, 178)


def write_tiff(path, rgb: np.ndarray, tile: int = 256) -> None:
    tifffile.imwrite(path, rgb, tile=(tile, tile), photometric="rgb", compression="zlib")


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Stained texture (every pixel differs, so a wrong offset or resize shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(yy * 7 + xx * 3) % 256, (yy // 3 + xx) % 256, (xx * 5 - yy) % 256], axis=-1)
    return (img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8)


def full_tissue(shape, downsample: float = 16.0) -> TissueMask:
    h, w = -(-shape[0] // int(downsample)), -(-shape[1] // int(downsample))
    return TissueMask(np.ones((h, w), bool), downsample, np.zeros((h, w, 3), np.uint8))


# ---------------------------------------------------------------- windows


def test_grid_covers_only_tissue_windows_with_the_stride():
    height, width, d = 1000, 1300, 10
    mask = np.zeros((100, 130), bool)
    mask[20:60, 30:90] = True  # tissue at y 200..600, x 300..900
    mask[80:83, 120:123] = True  # a speck near the corner
    tissue = TissueMask(mask, float(d), np.zeros((100, 130, 3), np.uint8))
    cfg = TilesConfig(size=200, stride=150, min_tissue=0.3)
    grid = tile_grid(tissue, (height, width), cfg)
    assert list(grid.columns) == ["y0", "x0", "tissue"] and len(grid)
    # every start is on the stride or clamped to the last window inside the slide
    assert set(grid["y0"]) <= set(range(0, height - 200 + 1, 150)) | {height - 200}
    assert set(grid["x0"]) <= set(range(0, width - 200 + 1, 150)) | {width - 200}
    assert (grid["tissue"] >= cfg.min_tissue).all()
    # brute force over every grid position: the grid holds exactly those with enough tissue
    ys = sorted(set(range(0, height - 200 + 1, 150)) | {height - 200})
    xs = sorted(set(range(0, width - 200 + 1, 150)) | {width - 200})
    expected = {
        (y, x)
        for y in ys
        for x in xs
        if mask[y // d : (y + 200) // d, x // d : (x + 200) // d].mean() >= cfg.min_tissue
    }
    assert set(zip(grid["y0"], grid["x0"], strict=True)) == expected
    for y, x, t in grid.itertuples(index=False):
        assert t == pytest.approx(mask[y // d : (y + 200) // d, x // d : (x + 200) // d].mean())
    assert (1000 - 200, 1300 - 200) not in expected  # the 9-cell speck is below min_tissue
    assert len(tile_grid(tissue, (height, width), dataclasses.replace(cfg, min_tissue=0.0))) == len(ys) * len(
        xs
    )


def test_grid_on_a_slide_smaller_than_the_window_is_one_padded_window():
    tissue = full_tissue((300, 500), 10.0)
    grid = tile_grid(tissue, (300, 500), TilesConfig(size=512, stride=512, min_tissue=0.0))
    assert list(zip(grid["y0"], grid["x0"], strict=True)) == [(0, 0)]
    assert grid["tissue"].iloc[0] == pytest.approx(300 * 500 / 512**2, abs=0.02)


def test_centred_windows_contain_each_glomerulus_and_stay_inside():
    shape, size = (3000, 4000), 512
    rng = np.random.default_rng(5)
    glomeruli = [Point(x, y).buffer(r) for x, y, r in [(30, 40, 25), (3990, 2980, 9), (2000, 1500, 150)]]
    glomeruli += [
        Point(rng.uniform(200, 3800), rng.uniform(200, 2800)).buffer(rng.uniform(40, 200)) for _ in range(20)
    ]
    windows = centred_windows(annotations.centres(glomeruli), shape, size)
    assert (windows["y0"] >= 0).all() and (windows["x0"] >= 0).all()
    assert (windows["y0"] + size <= shape[0]).all() and (windows["x0"] + size <= shape[1]).all()
    for g in glomeruli:
        minx, miny, maxx, maxy = g.bounds
        assert any(
            x <= max(minx, 0) and maxx <= x + size and y <= max(miny, 0) and maxy <= y + size
            for y, x in zip(windows["y0"], windows["x0"], strict=True)
        ), g.bounds
    assert len(centred_windows([(100, 100), (100, 100)], shape, size)) == 1
    small = centred_windows([(50, 60)], (100, 200), size)  # slide smaller than the window
    assert (small["y0"].iloc[0], small["x0"].iloc[0]) == (0, 0)


def test_select_windows_dedupes_and_caps_keeping_centred_first():
    tissue = full_tissue((1000, 1000), 10.0)
    cfg = TilesConfig(size=200, stride=200, min_tissue=0.0)
    grid = tile_grid(tissue, (1000, 1000), cfg)
    centred = centred_windows([(100, 100), (500, 517)], (1000, 1000), 200)
    both = select_windows(grid, centred, tissue, cfg)
    assert len(both) == len(grid) + 1  # (0, 0) is in both
    assert both["centred"].sum() == 2 and (both["tissue"] == 1.0).all()
    capped = select_windows(grid, centred, tissue, dataclasses.replace(cfg, max_tiles_per_slide=3))
    assert len(capped) == 3 and capped["centred"].sum() == 2


def kaggle_runs(mask: np.ndarray) -> np.ndarray:
    """(start0, length) runs of a mask in Kaggle's column-major order (test reference)."""
    flat = np.concatenate([[0], mask.T.ravel().astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    return np.stack([edges[::2], edges[1::2] - edges[::2]], axis=1)


def test_centres_from_runs_match_the_objects():
    height, width, stride = 700, 900, 16
    mask = np.zeros((height, width), bool)
    # the last two touch the bottom and the top edge in the same columns: Kaggle runs then
    # continue from the bottom of one column into the top of the next
    blobs = [(100, 120, 60), (400, 600, 90), (650, 300, 70), (10, 310, 40)]
    yy, xx = np.mgrid[0:height, 0:width]
    for cy, cx, r in blobs:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    runs = kaggle_runs(mask)
    assert (runs[:, 0] // height != (runs.sum(axis=1) - 1) // height).any()  # runs over column ends
    centres = centres_from_runs(runs, (height, width), stride=stride)
    labels, n = ndimage.label(mask)
    assert len(centres) == n == 4
    truth = sorted(
        ((s[0].start + s[0].stop) / 2, (s[1].start + s[1].stop) / 2) for s in ndimage.find_objects(labels)
    )
    for (y, x), (ty, tx) in zip(sorted(centres), truth, strict=True):
        assert abs(y - ty) <= stride and abs(x - tx) <= stride
    assert centres_from_runs(np.zeros((0, 2), np.int64), (height, width)) == []


# ---------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 1100 x 1300 tiled TIFF, two glomerulus polygons and the RLE of their mask."""
    path = tmp_path_factory.mktemp("slide") / "s.tiff"
    write_tiff(path, textured(1100, 1300))
    geoms = [Point(400, 300).buffer(120), box(900, 700, 1180, 1010)]
    shape = (1100, 1300)
    return path, shape, geoms, annotations.polygons_to_rle(geoms, shape)


def windows_of(shape, size, extra=()):
    grid = tile_grid(full_tissue(shape), shape, TilesConfig(size=size, stride=size, min_tissue=0.0))
    more = pd.DataFrame(list(extra), columns=["y0", "x0"]).assign(tissue=1.0)
    return pd.concat([grid, more], ignore_index=True)


@pytest.mark.parametrize("size,out", [(300, 100), (250, 100)])
def test_extracted_store_matches_window_reads(slide, tmp_path, size, out):
    from pipeline.slides import open_slide

    path, shape, geoms, _ = slide
    cfg = TilesConfig(size=size, stride=size, out_size=out, mask_threshold=0.5, workers=2)
    windows = windows_of(shape, size, extra=[(180, 280)])
    index_geoms = annotations.as_index(geoms)
    with open_slide(path) as reader:
        index = extract_tiles(reader, index_geoms.rasterize, windows, tmp_path / "s.zarr", cfg, "s")
        images, masks = open_tile_store(tmp_path / "s.zarr")
        n = len(windows)
        assert images.shape == (n, out, out, 3) and images.dtype == np.uint8
        assert masks.shape == (n, out, out) and masks.dtype == np.uint8
        assert images.chunks == (1, out, out, 3) and masks.chunks == (1, out, out)
        assert images.compressors  # compressed
        for name in ("images", "masks"):  # flat chunk keys (pipeline.stores): one file per tile, no folders
            chunk_files = [p for p in (tmp_path / "s.zarr" / name).iterdir() if p.name.startswith("c")]
            assert len(chunk_files) == n and all(p.is_file() and p.name.startswith("c.") for p in chunk_files)
        assert list(index.columns) == INDEX_COLUMNS and (index["tile"] == np.arange(n)).all()
        assert (index["slide"] == "s").all()
        pd.testing.assert_frame_equal(read_tile_index(tmp_path / "s.zarr"), index, check_dtype=False)
        for i, (y0, x0) in enumerate(zip(index["y0"], index["x0"], strict=True)):
            window = reader.read(int(y0), int(x0), size, size)
            np.testing.assert_array_equal(images[i], resize_area(window, out))
            truth = annotations.rasterize_window(geoms, int(y0), int(x0), size, size)
            np.testing.assert_array_equal(
                masks[i], (resize_area(truth.astype(bool), out) >= 0.5).astype(np.uint8)
            )
            assert index["positive"].iloc[i] == pytest.approx(truth.mean())
    assert (index["positive"] > 0).sum() >= 2 and (index["positive"] == 0).any()
    assert masks[:].max() == 1


def test_windows_past_the_edge_are_padded(slide, tmp_path):
    from pipeline.slides import open_slide

    path, shape, geoms, rle_text = slide
    cfg = TilesConfig(size=1536, stride=1536, out_size=512)
    windows = windows_of(shape, 1536)  # slide smaller than the window: one window at (0, 0)
    assert list(zip(windows["y0"], windows["x0"], strict=True)) == [(0, 0)]
    runs = rle.parse(rle_text, shape)
    with open_slide(path) as reader:
        extract_tiles(
            reader, lambda *w: rle.decode_window(runs, shape, *w), windows, tmp_path / "p.zarr", cfg, "p"
        )
        images, masks = open_tile_store(tmp_path / "p.zarr")
        full = np.full((1536, 1536, 3), 255, np.uint8)
        full[:1100, :1300] = reader.read(0, 0, 1100, 1300)
    np.testing.assert_array_equal(images[0], resize_area(full, 512))
    truth = np.zeros((1536, 1536), bool)
    truth[:1100, :1300] = rle.decode(rle_text, shape) > 0
    np.testing.assert_array_equal(masks[0], resize_area(truth, 512) >= 0.5)


def test_no_truth_gives_zero_masks_and_schedulers_agree(slide, tmp_path):
    from distributed import LocalCluster

    from pipeline.slides import open_slide

    path, shape, geoms, _ = slide
    cfg = TilesConfig(size=400, stride=400, out_size=100, scheduler="synchronous")
    windows = windows_of(shape, 400)
    truth = annotations.as_index(geoms)
    with open_slide(path) as reader:
        none = extract_tiles(reader, None, windows, tmp_path / "none.zarr", cfg, "s")
        sync = extract_tiles(reader, truth, windows, tmp_path / "sync.zarr", cfg, "s")
        with LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster:
            dist_cfg = dataclasses.replace(cfg, scheduler=cluster.scheduler_address)
            dist = extract_tiles(reader, truth, windows, tmp_path / "dist.zarr", dist_cfg, "s")
    assert (none["positive"] == 0).all()
    assert open_tile_store(tmp_path / "none.zarr")[1][:].max() == 0
    pd.testing.assert_frame_equal(sync, dist)
    for name in ("images", "masks"):
        a = zarr.open_group(tmp_path / "sync.zarr", mode="r")[name][:]
        np.testing.assert_array_equal(a, zarr.open_group(tmp_path / "dist.zarr", mode="r")[name][:])


def test_failed_extraction_leaves_no_store(slide, tmp_path):
    from pipeline.slides import open_slide

    path, shape, geoms, _ = slide
    cfg = TilesConfig(size=200, stride=200, out_size=100, workers=2)
    windows = windows_of(shape, 200)
    calls = {"n": 0}

    def flaky(y0, x0, height, width):
        calls["n"] += 1
        if calls["n"] > 12:  # dies mid-way, after a first batch was written
            raise RuntimeError("killed")
        return annotations.rasterize_window(geoms, y0, x0, height, width)

    with open_slide(path) as reader:
        with pytest.raises(RuntimeError, match="killed"):
            extract_tiles(reader, flaky, windows, tmp_path / "out" / "s.zarr", cfg, "s")
        assert not (tmp_path / "out" / "s.zarr").exists()
        assert list((tmp_path / "out").iterdir()) == []  # no temporary left behind either
        # an existing complete store survives a failed rerun untouched
        good = extract_tiles(reader, None, windows.head(3), tmp_path / "out" / "s.zarr", cfg, "s")
        calls["n"] = 0
        with pytest.raises(RuntimeError):
            extract_tiles(reader, flaky, windows, tmp_path / "out" / "s.zarr", cfg, "s")
    assert open_tile_store(tmp_path / "out" / "s.zarr")[0].shape[0] == len(good) == 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s.zarr"]


# ---------------------------------------------------------------- stage


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory):
    """A 2000 x 2600 slide: two tissue pieces on glass, glomeruli polygons inside them."""
    root = tmp_path_factory.mktemp("stage")
    height, width = 2000, 2600
    rng = np.random.default_rng(2)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    tex = textured(height, width, seed=1)
    img[200:1400, 150:1300] = (tex[200:1400, 150:1300] // 4 + np.array(STAIN) * 3 // 4).astype(np.uint8)
    img[1100:1900, 1700:2500] = (tex[1100:1900, 1700:2500] // 4 + np.array(STAIN) * 3 // 4).astype(np.uint8)
    img = np.clip(img.astype(np.int16) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
    write_tiff(root / "s.tiff", img)
    geoms = [Point(x, y).buffer(r) for x, y, r in [(520, 500, 90), (1000, 1020, 110), (2100, 1500, 70)]]
    annotations.write_geojson(geoms, root / "s.json")
    config = Config(
        tissue=TissueConfig(downsample=16),
        tiles=TilesConfig(size=512, stride=512, out_size=128, min_tissue=0.2),
    )
    run_tissue(root / "s.tiff", root / "s.png", root / "s.thumb.png", config)
    return root, (height, width), geoms, config


def contains(index: pd.DataFrame, geom, size: int) -> bool:
    minx, miny, maxx, maxy = geom.bounds
    return any(
        x <= minx and maxx <= x + size and y <= miny and maxy <= y + size
        for y, x in zip(index["y0"], index["x0"], strict=True)
    )


@pytest.mark.parametrize("truth_from", ["polygons", "rle"])
def test_run_tiles_over_tissue_with_centred_glomeruli(tissue_slide, tmp_path, truth_from):
    root, shape, geoms, config = tissue_slide
    rle_text = annotations.polygons_to_rle(geoms, shape) if truth_from == "rle" else None
    polygons = root / "s.json" if truth_from == "polygons" else None
    out_zarr, out_csv = tmp_path / "tiles" / "s.zarr", tmp_path / "tiles" / "s.csv"
    index = run_tiles(root / "s.tiff", "s", rle_text, polygons, root / "s.png", out_zarr, out_csv, config)
    pd.testing.assert_frame_equal(pd.read_csv(out_csv), index, check_dtype=False)
    images, masks = open_tile_store(out_zarr)
    assert images.shape == (len(index), 128, 128, 3)
    for g in geoms:
        assert contains(index, g, 512)  # a window holds each glomerulus whole
    # grid windows lie on tissue: none in the glass-only corners
    assert not ((index["y0"] < 150) & (index["x0"] > 1400)).any()
    assert (index["positive"] > 0).sum() >= 3
    for i in np.flatnonzero(index["positive"].to_numpy() > 0):
        y0, x0 = int(index["y0"].iloc[i]), int(index["x0"].iloc[i])
        truth = annotations.rasterize_window(geoms, y0, x0, 512, 512)
        np.testing.assert_array_equal(masks[i], resize_area(truth.astype(bool), 128) >= 0.5)
    assert sorted(p.name for p in out_zarr.parent.iterdir()) == ["s.csv", "s.zarr"]


def test_tiles_stage_on_a_synthetic_slide_with_default_tiles(tmp_path):
    """The demo data end to end: tissue PNG -> default 1536 -> 512 tiles, truth from the RLE."""
    from pipeline.synthetic import write_synthetic_slide

    shape = (2048, 2560)
    geoms = write_synthetic_slide(tmp_path / "a.tiff", *shape, seed=3)
    assert geoms
    config = Config()
    run_tissue(tmp_path / "a.tiff", tmp_path / "a.png", tmp_path / "a.thumb.png", config)
    from pipeline.tissue import load_tissue

    tissue = load_tissue(tmp_path / "a.png", shape)
    for g in geoms:  # glomeruli lie in detected tissue
        minx, miny, maxx, maxy = g.bounds
        assert tissue.window_fraction(int(miny), int(minx), int(maxy - miny), int(maxx - minx)) > 0.8
    rle_text = annotations.polygons_to_rle(geoms, shape)
    index = run_tiles(
        tmp_path / "a.tiff",
        "a",
        rle_text,
        None,
        tmp_path / "a.png",
        tmp_path / "a.zarr",
        tmp_path / "a.csv",
        config,
    )
    images, masks = open_tile_store(tmp_path / "a.zarr")
    assert images.shape[1:] == (512, 512, 3) and masks.shape[1:] == (512, 512)
    assert ((index["y0"] >= 0) & (index["y0"] + 1536 <= shape[0])).all()
    assert ((index["x0"] >= 0) & (index["x0"] + 1536 <= shape[1])).all()
    for g in geoms:
        assert contains(index, g, 1536)
    for i in range(len(index)):
        y0, x0 = int(index["y0"].iloc[i]), int(index["x0"].iloc[i])
        truth = annotations.rasterize_window(geoms, y0, x0, 1536, 1536)
        np.testing.assert_array_equal(masks[i], resize_area(truth.astype(bool), 512) >= 0.5)


def test_unknown_scheduler_is_a_config_error(slide, tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.slides import open_slide

    path, shape, _, _ = slide
    with open_slide(path) as reader, pytest.raises(ConfigError, match="scheduler"):
        extract_tiles(
            reader, None, windows_of(shape, 500), tmp_path / "x.zarr", TilesConfig(scheduler="processes"), "s"
        )
    assert not (tmp_path / "x.zarr").exists()
