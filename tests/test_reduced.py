"""Decode once: windows cut from slide blocks reduced once equal windows read one by one.

Real tiled TIFFs (JPEG and Deflate, tile sizes that do and do not divide the window), a
slide whose sides are not multiples of the scale, a shifted grid with windows reaching
before the slide, colour normalisation, and a real model: the consensus maps and the RLE
must be the same as the old per-window data path's, and each block is decoded once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn

from pipeline import predict as P
from pipeline.config import PredictConfig
from pipeline.encode import encode_prediction
from pipeline.reduced import ReducedSlide, block_side
from pipeline.slides import open_slide
from pipeline.stain import ColourNormaliser, ColourStats

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def textured_slide(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth stain-like colour fields plus noise: every 3 x 3 block mean differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    base = 150 + 60 * np.sin(yy / 37.0)[..., None] * np.cos(xx / 53.0)[..., None] * np.array([1.0, 0.6, 0.8])
    img = base + rng.normal(0, 18, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tiff(path: Path, rgb: np.ndarray, tile: int, compression: str) -> Path:
    kw = {"compressionargs": {"level": 90}} if compression == "jpeg" else {}
    tifffile.imwrite(path, rgb, tile=(tile, tile), photometric="rgb", compression=compression, **kw)
    return path


class SmallNet(nn.Module):
    """A real (random, fixed-seed) conv net: its output depends on every input pixel nearby."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 1, 5, padding=2))

    def forward(self, x):
        return 30.0 * self.body(x)  # spread the probabilities over (0, 1)


def cfg(**kw) -> PredictConfig:
    base = dict(window=300, out_size=100, overlap=0.5, batch_size=4, prefetch=2, workers=2, tissue_only=False)
    base.update(kw)
    return PredictConfig(**base)


def both_maps(tmp_path: Path, slide: Path, c: PredictConfig, **kw) -> tuple[np.ndarray, np.ndarray, P.PredictStats]:
    out = []
    stats = None
    for name, once in (("once", True), ("windows", False)):
        with open_slide(slide) as reader:
            s = P.predict_slide(reader, [SmallNet()], None, c, tmp_path / f"{name}.zarr", MEAN, STD, decode_once=once, **kw)
        stats = s if once else stats
        out.append(np.asarray(zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r")[:], np.float32))
    return out[0], out[1], stats


@pytest.mark.parametrize(
    "shape, tile, compression, origin",
    [
        ((1000, 1201), 256, "jpeg", (0, 0)),  # sides not multiples of 3; tiles not of the window
        ((900, 1500), 128, "zlib", (150, 150)),  # grid shifted by half a stride: padded windows
        ((700, 800), 96, "jpeg", (0, 0)),  # tile a multiple of the scale
    ],
)
def test_decode_once_gives_the_same_map_and_rle(tmp_path, shape, tile, compression, origin):
    slide = write_tiff(tmp_path / "s.tiff", textured_slide(*shape), tile, compression)
    c = cfg()
    once, windows, stats = both_maps(tmp_path, slide, c, origin=origin)
    assert once.shape == windows.shape
    assert np.abs(once - windows).max() <= 1e-3
    assert float(once.std()) > 0.01  # the map is not flat: a difference would show
    rle = [encode_prediction(tmp_path / f"{n}.zarr", shape, c) for n in ("once", "windows")]
    assert rle[0] == rle[1]
    assert stats.blocks_read > 0


def test_decode_once_with_colour_normalisation(tmp_path):
    """Normalisation is pointwise, so normalising blocks once equals normalising each window."""
    slide = write_tiff(tmp_path / "s.tiff", textured_slide(800, 900, seed=3), 256, "jpeg")
    colour = ColourNormaliser("reinhard", ColourStats((60.0, 20.0, -10.0), (12.0, 6.0, 5.0)))
    source = ColourStats((62.0, 8.0, -2.0), (15.0, 4.0, 4.0))
    once, windows, _ = both_maps(tmp_path, slide, cfg(), normalise=lambda im: colour.apply(im, source))
    assert np.abs(once - windows).max() <= 1e-3


class CountingReader:
    """A real slide reader that counts the slide pixels each read decodes (padding is not decoded)."""

    def __init__(self, reader) -> None:
        self.reader, self.shape, self.path = reader, reader.shape, reader.path
        self.pixels = 0

    def read(self, y0, x0, h, w, level=0, fill=255):
        ya, yb = max(y0, 0), min(y0 + h, self.shape[0])
        xa, xb = max(x0, 0), min(x0 + w, self.shape[1])
        self.pixels += max(0, yb - ya) * max(0, xb - xa)
        return self.reader.read(y0, x0, h, w, level=level, fill=fill)

    def _segment_rows(self, level):
        return self.reader._segment_rows(level)

    def _segment_cols(self, level):
        return self.reader._segment_cols(level)


def test_each_block_is_decoded_once_and_memory_stays_a_band(tmp_path):
    """At overlap 0.5 the per-window path decodes the slide ~4x; decode-once exactly once."""
    shape = (1800, 2100)
    slide = write_tiff(tmp_path / "s.tiff", textured_slide(*shape), 256, "jpeg")
    c = cfg()
    read = {}
    for once in (True, False):
        with open_slide(slide) as real:
            reader = CountingReader(real)
            P.predict_slide(reader, [SmallNet()], None, c, tmp_path / f"{once}.zarr", MEAN, STD, decode_once=once)
            read[once] = reader.pixels / (shape[0] * shape[1])
    assert read[False] > 3.0
    assert read[True] == pytest.approx(1.0)


def test_blocks_above_the_current_window_are_freed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    slide = write_tiff(tmp_path / "s.tiff", textured_slide(3000, 600), 256, "zlib")
    with open_slide(slide) as reader, ThreadPoolExecutor(2) as pool:
        blocks = ReducedSlide(reader, 3, pool)
        most = 0
        for y0 in range(0, 3000 - 300, 150):
            window = blocks.request(y0, 0, 300)
            assert window().shape == (100, 100, 3)
            most = max(most, blocks.cached_blocks)
        rows = -(-300 // blocks.block_h) + 1
        cols = -(-600 // blocks.block_w)
        assert most <= rows * cols
        np.testing.assert_array_equal(window(), P.read_window(reader, y0, 0, 300, 100))


def test_block_sides_align_to_scale_and_tiles():
    assert block_side(3, 512) == 1536  # lcm(3, 512): no tile decoded by two blocks
    assert block_side(3, 256) % 768 == 0
    assert block_side(4, 256) == 1024
    assert block_side(7, 1000) % 7 == 0  # lcm 7000 too big: a multiple of the scale only
    with pytest.raises(ValueError, match="lattice"):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            ReducedSlide(np.zeros(0), 3, pool, block=(300, 300)).request(1, 0, 300)


def test_block_keys_are_the_blocks_a_window_overlaps():
    blocks = ReducedSlide(np.zeros(0), 3, None, block=(300, 600))
    assert blocks.block_keys(0, 0, 300) == [(0, 0)]
    assert blocks.block_keys(150, 450, 300) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert blocks.block_keys(300, 600, 300) == [(1, 1)]  # ends on a block edge: no extra row or column


def test_predict_bench_measures_the_data_path(tmp_path):
    """bench/predict.py --data-path pieces: the floor decodes every tile, the null model has no weights."""
    from tests.conftest import load_bench_script

    bench = load_bench_script("predict")
    slide = write_tiff(tmp_path / "s.tiff", textured_slide(512, 768), 128, "jpeg")
    floor = bench.decode_floor(slide, 2)
    assert floor["tiles"] == 4 * 6
    assert floor["samples"] == 512 * 768 * 3  # every tile decoded, exactly once
    seq = bench.sequential_pass(slide, 2)
    assert seq["seconds"] > 0 and seq["check"] > 0
    null = bench.build_model("null")
    assert not list(null.parameters())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(null(x), null(x.clone()))


def test_tiles_cut_from_blocks_equal_tiles_read_one_by_one(tmp_path):
    """Tile extraction decodes once too: lattice windows (overlapping, centred, at the edge) and an
    off-lattice one give exactly the per-window images; masks and positives are unchanged."""
    from pipeline.config import TilesConfig
    from pipeline.tiles import _extract_one, extract_tiles, open_tile_store, tile_lattice

    import pandas as pd

    shape = (1000, 1201)
    slide = write_tiff(tmp_path / "s.tiff", textured_slide(*shape, seed=5), 256, "jpeg")
    cfg = TilesConfig(size=300, stride=150, out_size=100, workers=2)
    assert tile_lattice(cfg) == 3
    windows = pd.DataFrame({"y0": [0, 0, 150, 150, 451, 699, 699], "x0": [0, 150, 0, 603, 898, 0, 900]})
    truth_mask = np.zeros(shape, bool)
    truth_mask[200:420, 250:700] = True

    def truth(y0, x0, h, w):
        return truth_mask[y0 : y0 + h, x0 : x0 + w]

    with open_slide(slide) as reader:
        index = extract_tiles(reader, truth, windows, tmp_path / "t.zarr", cfg, "s")
        images, masks = open_tile_store(tmp_path / "t.zarr")
        for i, (y0, x0) in enumerate(zip(windows["y0"], windows["x0"], strict=True)):
            image, mask, positive = _extract_one(reader, truth, int(y0), int(x0), 300, 100, cfg.mask_threshold, shape)
            np.testing.assert_array_equal(images[i], image)
            np.testing.assert_array_equal(masks[i], mask)
            assert index["positive"].iloc[i] == pytest.approx(positive)
    assert index["positive"].max() > 0


def test_tile_windows_sit_on_the_model_pixel_lattice():
    from pipeline.config import TilesConfig
    from pipeline.tiles import centred_windows, tile_grid
    from pipeline.tissue import TissueMask

    cfg = TilesConfig(size=300, stride=150, out_size=100, min_tissue=0.0)
    tissue = TissueMask(np.ones((101, 121), bool), 10.0, np.zeros((101, 121, 3), np.uint8))
    grid = tile_grid(tissue, (1010, 1210), cfg)
    assert (grid["y0"] % 3 == 0).all() and (grid["x0"] % 3 == 0).all()
    assert grid["y0"].max() == 708 and grid["x0"].max() == 909  # the edge, rounded down to the lattice
    centres = [(500.0, 601.0), (12.0, 1200.0), (777.7, 333.3)]
    win = centred_windows(centres, (1010, 1210), 300, 3)
    assert (win["y0"] % 3 == 0).all() and (win["x0"] % 3 == 0).all()
    assert list(win["y0"]) == [351, 0, 627] and list(win["x0"]) == [450, 909, 183]
