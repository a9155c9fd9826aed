"""Encoding a stored prediction: strips + halos = whole-map upsampling, post-processing, store checks, the stage.

Low-res maps are written here straight into small Zarr stores (scale 3, as in
tests/test_predict.py, whose helpers and tiny models this reuses); the stage test
predicts one with the per-pixel oracle first.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage

from pipeline import encode as E
from pipeline import predict as P
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.rle import decode, encode
from tests.test_predict import MEAN, SCALE, STD, OracleModel, cfg, disks_image


# ---------------------------------------------------------------- encoding


def _store(tmp_path, low: np.ndarray, slide_shape, chunks=(50, 7)):
    path = tmp_path / "m.zarr"
    arr = zarr.create_array(store=str(path), shape=low.shape, chunks=chunks, dtype="float16", fill_value=0.0)
    arr[:] = low.astype(np.float16)
    arr.attrs.update({"slide_shape": list(slide_shape), "scale": SCALE})
    return path


def test_strip_encoding_equals_whole_map_upsampling(tmp_path, monkeypatch):
    """Column strips with halos + row blocks give the whole-map bilinear upsampling.

    Identical up to float rounding of the interpolation weights (torch computes them
    from each output index): only pixels within 1e-4 of the threshold may differ.
    """
    monkeypatch.setattr(E, "ENCODE_ROW_BLOCK", 13)
    rng = np.random.default_rng(5)
    low = ndimage.gaussian_filter(rng.random((40, 47)), 2)
    low = ((low - low.min()) / np.ptp(low)).astype(np.float16).astype(np.float32)
    shape = (119, 140)  # not multiples of 3: the last row/column cells are cropped
    path = _store(tmp_path, low, shape)
    up = torch.nn.functional.interpolate(torch.from_numpy(low)[None, None], scale_factor=SCALE, mode="bilinear", align_corners=False)
    up = up[0, 0].numpy()[: shape[0], : shape[1]]
    want = up >= 0.5
    got = decode(E.encode_prediction(path, shape, cfg()), shape).astype(bool)
    assert 0.3 < want.mean() < 0.7
    assert (np.abs(up[got != want] - 0.5) < 1e-4).all() and (got != want).sum() <= 3
    near = decode(E.encode_prediction(path, shape, cfg(upsample="nearest")), shape).astype(bool)
    np.testing.assert_array_equal(near, np.kron(low >= 0.5, np.ones((3, 3), bool)).astype(bool)[: shape[0], : shape[1]])
    assert encode(got) == E.encode_prediction(path, shape, cfg())


def test_postprocessing_fills_holes_and_drops_small_objects(tmp_path):
    low = np.zeros((60, 80), np.float32)
    yy, xx = np.mgrid[:60, :80]
    ring = ((yy - 30) ** 2 + (xx - 25) ** 2 <= 15**2) & ((yy - 30) ** 2 + (xx - 25) ** 2 > 5**2)
    low[ring] = 0.9
    low[10:13, 60:63] = 0.8  # 9 low-res px = 81 full-res px
    shape = (180, 240)
    path = _store(tmp_path, low, shape, chunks=(20, 30))
    plain = decode(E.encode_prediction(path, shape, cfg()), shape)
    assert plain[90, 75] == 0 and plain[34, 184] == 1  # the hole and the speck are there
    done = decode(E.encode_prediction(path, shape, cfg(fill_holes=True, min_object_px=100)), shape)
    assert done[90, 75] == 1 and done[34, 184] == 0
    assert done[:, :150].sum() > plain[:, :150].sum()  # hole filled...
    # ...and nothing outside the ring's outline grew
    assert (done[:, :150] <= ndimage.binary_fill_holes(plain[:, :150])).all()
    kept = decode(E.encode_prediction(path, shape, cfg(min_object_px=81)), shape)
    assert kept[34, 184] == 1  # exactly at the limit is kept (area scaled by scale^2)


def test_encode_checks_the_store(tmp_path):
    low = np.zeros((10, 10), np.float32)
    path = _store(tmp_path, low, (30, 30))
    with pytest.raises(DataError, match="30"):
        E.encode_prediction(path, (60, 30), cfg())
    with pytest.raises(DataError, match="not found"):
        E.encode_prediction(tmp_path / "missing.zarr", (30, 30), cfg())
    bare = zarr.create_array(store=str(tmp_path / "bare.zarr"), shape=(10, 10), dtype="float16")
    del bare
    with pytest.raises(DataError, match="not a prediction store"):
        E.encode_prediction(tmp_path / "bare.zarr", (30, 30), cfg())


# ---------------------------------------------------------------- stage entry point (real files)


def test_run_encode_writes_rle_geojson_and_overlay(tmp_path):
    pytest.importorskip("pipeline.slides")
    pytest.importorskip("pipeline.metrics")
    from pipeline.metrics import dice_rle
    from pipeline.slides import open_slide

    disks = [(200, 260, 60), (520, 700, 90), (760, 300, 45)]
    img, truth = disks_image(1000, 1201, disks)
    slide = tmp_path / "abc123.tiff"
    tifffile.imwrite(slide, img, tile=(256, 256), photometric="rgb", compression="zlib")
    config = Config(predict=cfg(), tissue=dataclasses.replace(Config().tissue, downsample=8))
    with open_slide(slide) as reader:
        P.predict_slide(reader, [OracleModel()], None, config.predict, tmp_path / "p.zarr", MEAN, STD)
    truth_rle = encode(truth)
    out = tmp_path / "out"
    rle = E.run_encode(tmp_path / "p.zarr", slide, out / "a.rle", out / "a.geojson", out / "a.png", truth_rle, config)
    assert (out / "a.rle").read_text().strip() == rle
    assert dice_rle(rle, truth_rle, truth.shape) >= 0.99
    import json

    from shapely.geometry import shape as to_shape

    features = json.loads((out / "a.geojson").read_text())["features"]
    polys = sorted((to_shape(f["geometry"]) for f in features), key=lambda g: g.centroid.y)
    assert len(polys) == 3
    for (cy, cx, r), poly in zip(sorted(disks), polys):  # full-res (x, y) coordinates
        assert poly.centroid.x == pytest.approx(cx, abs=2) and poly.centroid.y == pytest.approx(cy, abs=2)
        assert poly.area == pytest.approx(math.pi * r * r, rel=0.05)
    from PIL import Image

    png = np.asarray(Image.open(out / "a.png"))
    assert png.shape[1] == math.ceil(1201 / 8)
    assert sorted(p.name for p in out.iterdir()) == ["a.geojson", "a.png", "a.rle"]
