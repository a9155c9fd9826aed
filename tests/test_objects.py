"""Per-glomerulus results: pixel size from TIFF tags, objects of a prediction, summary, object-level scores.

Slides are real (small) TIFFs written with tifffile, with and without resolution
tags; predictions are real Zarr stores at scale 3 (as 1536 -> 512) whose low-res
map holds discs of known radius, so areas, perimeters, centroids and densities
can be checked against geometry.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from pipeline import cli
from pipeline import objects as O
from pipeline.config import Config, PredictConfig
from pipeline.encode import run_encode
from pipeline.errors import DataError, SlideError
from pipeline.rle import area, decode, decode_downsampled, encode
from pipeline.slides import PixelSize, pixel_size_um
from pipeline.submission import evaluate_submission
from pipeline.tissue import TissueMask, save_tissue

SCALE = 3
HEIGHT, WIDTH = 600, 900  # full-res slide
# (centre y, centre x, radius, probability inside), full-res px
DISCS = [(150.0, 200.0, 90.0, 0.9), (400.0, 650.0, 60.0, 0.7)]
TISSUE_DOWNSAMPLE = 8
TISSUE_COLS = 56  # tissue over the left 56 of 113 mask columns


def _slide(path: Path, height: int = HEIGHT, width: int = WIDTH, **tags) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), 230, np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", tile=(256, 256), compression="zlib", **tags)
    return path


def _store(path: Path, discs=DISCS, shape=(HEIGHT, WIDTH)) -> Path:
    """A prediction store whose low-res map is each disc's probability inside it, 0 elsewhere."""
    h, w = math.ceil(shape[0] / SCALE), math.ceil(shape[1] / SCALE)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = yy * SCALE + SCALE / 2, xx * SCALE + SCALE / 2  # low-res pixel centres, full-res coords
    low = np.zeros((h, w), np.float32)
    for y, x, r, p in discs:
        low[(cy - y) ** 2 + (cx - x) ** 2 <= r * r] = p
    arr = zarr.create_array(store=str(path), shape=(h, w), chunks=(64, 50), dtype="float16", fill_value=0.0)
    arr[:] = low.astype(np.float16)
    arr.attrs.update({"slide_shape": list(shape), "scale": SCALE})
    return path


def _tissue(path: Path) -> Path:
    h, w = math.ceil(HEIGHT / TISSUE_DOWNSAMPLE), math.ceil(WIDTH / TISSUE_DOWNSAMPLE)
    mask = np.zeros((h, w), bool)
    mask[:, :TISSUE_COLS] = True
    thumb = np.full((h, w, 3), 230, np.uint8)
    save_tissue(TissueMask(mask=mask, downsample=float(TISSUE_DOWNSAMPLE), thumbnail=thumb), path,
                path.with_name(path.stem + ".thumb.png"))  # fmt: skip
    return path


def _config() -> Config:
    return Config(predict=PredictConfig(window=300, out_size=100, device="cpu"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- pixel size


def test_pixel_size_from_resolution_tags(tmp_path, caplog):
    cm = _slide(tmp_path / "cm.tiff", 64, 64, resolution=(20000, 25000), resolutionunit="CENTIMETER")
    assert pixel_size_um(cm) == pytest.approx(PixelSize(0.5, 0.4))
    assert pixel_size_um(cm).area_um2 == pytest.approx(0.2)
    inch = _slide(tmp_path / "inch.tiff", 64, 64, resolution=(101600, 101600), resolutionunit="INCH")
    assert pixel_size_um(inch) == pytest.approx(PixelSize(0.25, 0.25))
    assert pixel_size_um(_slide(tmp_path / "none.tiff", 64, 64)) is None  # tifffile writes unit "none"
    unitless = _slide(tmp_path / "unitless.tiff", 64, 64, resolution=(20000, 20000), resolutionunit="NONE")
    assert pixel_size_um(unitless) is None
    with caplog.at_level(logging.WARNING):
        dpi72 = _slide(tmp_path / "dpi72.tiff", 64, 64, resolution=(72, 72), resolutionunit="INCH")
        assert pixel_size_um(dpi72) is None  # a writer's default, not a scan
    assert "dpi72.tiff" in caplog.text and "too coarse" in caplog.text
    # a pyramid: the tags of the largest page count, not of the thumbnail-sized page before it
    pyramid = tmp_path / "pyramid.tiff"
    with tifffile.TiffWriter(pyramid) as tw:
        tw.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb", resolution=(10, 10), resolutionunit="CENTIMETER")
        tw.write(np.zeros((128, 128, 3), np.uint8), photometric="rgb", resolution=(40000, 40000),
                 resolutionunit="CENTIMETER")  # fmt: skip
    assert pixel_size_um(pyramid) == pytest.approx(PixelSize(0.25, 0.25))
    (tmp_path / "bad.tiff").write_bytes(b"II*\x00garbage")
    with pytest.raises(SlideError, match="bad.tiff: no image"):
        pixel_size_um(tmp_path / "bad.tiff")
    (tmp_path / "text.tiff").write_text("not a tiff")
    with pytest.raises(SlideError, match="text.tiff: cannot read TIFF tags"):
        pixel_size_um(tmp_path / "text.tiff")


# ---------------------------------------------------------------- measuring objects


def test_crofton_perimeter_of_a_disc_and_a_square():
    yy, xx = np.mgrid[:130, :130]
    disc = (yy - 64.5) ** 2 + (xx - 64.5) ** 2 <= 50**2
    assert O.crofton_perimeter(disc) == pytest.approx(2 * math.pi * 50, rel=0.01)
    square = np.zeros((60, 60), bool)
    square[10:50, 10:50] = True
    assert O.crofton_perimeter(square) == pytest.approx(160, rel=0.07)  # 4 directions: within ~6 %


def test_objects_are_8_connected_and_clipped_at_the_slide_edge():
    mask = np.zeros((5, 6), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one object
    mask[4, 5] = True  # the corner pixel: only 1 x 2 full-res px of it lie inside a 13 x 17 slide
    found = O.measure_objects(mask, 3, (13, 17))
    assert len(found) == 2
    first = found[0]
    assert first.area_px == 18 and (first.bbox_x0, first.bbox_y0, first.bbox_x1, first.bbox_y1) == (0, 0, 6, 6)
    corner = found[1]
    assert corner.area_px == 2 and (corner.bbox_x1, corner.bbox_y1) == (17, 13)
    assert (corner.centroid_x, corner.centroid_y) == (16.0, 12.5)
    assert corner.mean_probability is None and corner.area_um2 is None
    with pytest.raises(ValueError, match="not a 13 x 19 slide"):
        O.measure_objects(mask, 3, (13, 19))


class RecordingArray:
    """A probability map that records the rows of every read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.reads = data, data.shape, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_mean_probability_is_read_in_bands_that_hold_objects():
    labels = np.zeros((1000, 40), np.int32)
    labels[100:110, 5:9] = 1
    labels[700:720, 20:30] = 2
    prob = RecordingArray(np.where(labels == 1, 0.6, np.where(labels == 2, 0.8, 0.1)).astype(np.float16))
    means = O.mean_probabilities(labels, 2, prob, band=64)
    assert means == pytest.approx([0.6, 0.8], abs=1e-3)
    rows = sorted((k.start, k.stop) for k in prob.reads)
    assert rows == [(64, 128), (640, 704), (704, 768)]  # bands of 64 rows, only where objects are
    with pytest.raises(DataError, match="p.zarr"):
        O.mean_probabilities(labels, 2, np.zeros((10, 40)), source="p.zarr")


def test_run_encode_writes_objects_summary_and_sizes(tmp_path):
    slide = _slide(tmp_path / "s1.tiff", resolution=(20000, 20000), resolutionunit="CENTIMETER")  # 0.5 um/px
    store = _store(tmp_path / "s1.zarr")
    tissue = _tissue(tmp_path / "tissue" / "s1.png")
    out = tmp_path / "out"
    rle = run_encode(store, slide, out / "s1.rle", out / "s1.geojson", out / "s1.png", None, _config(),
                     out_objects=out / "s1.objects.csv", out_summary=out / "s1.summary.csv",
                     out_sizes_png=out / "s1.sizes.png", tissue_png=tissue, slide_id="s1")  # fmt: skip
    rows = _read_csv(out / "s1.objects.csv")
    assert list(rows[0]) == list(O.OBJECT_COLUMNS)
    assert [int(r["object_id"]) for r in rows] == [1, 2]
    for row, (cy, cx, r, p) in zip(rows, DISCS):
        a = float(row["area_px"])
        assert a == pytest.approx(math.pi * r * r, rel=0.02)
        assert float(row["area_um2"]) == pytest.approx(a * 0.25, abs=0.01)
        assert float(row["perimeter_px"]) == pytest.approx(2 * math.pi * r, rel=0.03)
        assert 0.95 <= float(row["circularity"]) <= 1.0
        assert float(row["centroid_x"]) == pytest.approx(cx, abs=1.0)
        assert float(row["centroid_y"]) == pytest.approx(cy, abs=1.0)
        assert int(row["bbox_x0"]) == pytest.approx(cx - r, abs=SCALE)
        assert int(row["bbox_x1"]) == pytest.approx(cx + r, abs=SCALE)
        assert int(row["bbox_y0"]) == pytest.approx(cy - r, abs=SCALE)
        assert int(row["bbox_y1"]) == pytest.approx(cy + r, abs=SCALE)
        assert float(row["mean_probability"]) == pytest.approx(p, abs=1e-3)
    # the same objects as the polygons and the RLE
    from shapely.geometry import shape as to_shape

    polys = sorted((to_shape(f["geometry"]) for f in json.loads((out / "s1.geojson").read_text())["features"]),
                   key=lambda g: g.centroid.y)  # fmt: skip
    assert len(polys) == 2
    for row, poly in zip(rows, polys):
        assert poly.area == pytest.approx(float(row["area_px"]), rel=0.02)
    assert area(rle) == pytest.approx(sum(float(r["area_px"]) for r in rows), rel=0.02)
    # summary: tissue = 75 x 56 mask cells of 8 x 8 px, at 0.25 um^2 per px
    (summary,) = _read_csv(out / "s1.summary.csv")
    tissue_px = 75 * TISSUE_COLS * TISSUE_DOWNSAMPLE**2
    assert summary["id"] == "s1" and summary["objects"] == "2"
    assert int(summary["tissue_px"]) == tissue_px and float(summary["um_per_px_x"]) == 0.5
    assert float(summary["tissue_mm2"]) == pytest.approx(tissue_px * 0.25 / 1e6, rel=1e-3)
    assert float(summary["density_per_mm2_tissue"]) == pytest.approx(2 / (tissue_px * 0.25 / 1e6), rel=1e-3)
    assert float(summary["density_per_mpx_tissue"]) == pytest.approx(2 / (tissue_px / 1e6), rel=1e-3)
    from PIL import Image

    with Image.open(out / "s1.sizes.png") as im:
        assert im.format == "PNG" and im.size[0] >= 300
    assert not list(out.glob(".*partial"))


def test_cli_encode_on_a_slide_without_pixel_size(tmp_path, capsys):
    slide = _slide(tmp_path / "s2.tiff")
    store = _store(tmp_path / "s2.zarr")
    tissue = _tissue(tmp_path / "s2.png")
    out = tmp_path / "out"
    args = ["encode", "--prob-zarr", store, "--slide", slide, "--id", "s2", "--out-rle", out / "s2.rle",
            "--out-geojson", out / "s2.geojson", "--out-png", out / "s2.png", "--tissue", tissue,
            "--out-objects", out / "s2.objects.csv", "--out-summary", out / "s2.summary.csv",
            "--out-sizes", out / "s2.sizes.png",
            "--settings", json.dumps({"predict": {"window": 300, "out_size": 100}})]  # fmt: skip
    assert cli.main([str(a) for a in args]) == 0
    table = pd.read_csv(out / "s2.objects.csv")
    assert len(table) == 2 and table["area_um2"].isna().all() and table["area_px"].gt(10000).all()
    summary = pd.read_csv(out / "s2.summary.csv").iloc[0]
    assert pd.isna(summary["density_per_mm2_tissue"]) and pd.isna(summary["um_per_px_x"])
    assert summary["density_per_mpx_tissue"] == pytest.approx(2 / (75 * TISSUE_COLS * 64 / 1e6), rel=1e-3)
    assert (out / "s2.sizes.png").stat().st_size > 1000
    # a tissue mask of another slide is an error naming it, and nothing is left half-written
    wrong = tmp_path / "wrong.png"
    save_tissue(TissueMask(mask=np.ones((5, 5), bool), downsample=8.0, thumbnail=np.zeros((5, 5, 3), np.uint8)),
                wrong, tmp_path / "wrong.thumb.png")  # fmt: skip
    args[args.index(tissue)] = wrong
    args[args.index(out / "s2.summary.csv")] = out / "other.summary.csv"
    assert cli.main([str(a) for a in args]) == 1
    assert "wrong.png" in capsys.readouterr().err
    assert not (out / "other.summary.csv").exists()


def test_no_objects_and_no_tissue_mask(tmp_path):
    slide = _slide(tmp_path / "s3.tiff", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    store = _store(tmp_path / "s3.zarr", discs=[])
    out = tmp_path / "out"
    run_encode(store, slide, out / "s3.rle", out / "s3.geojson", out / "s3.png", None, _config(),
               out_objects=out / "s3.objects.csv", out_summary=out / "s3.summary.csv",
               out_sizes_png=out / "s3.sizes.png")  # fmt: skip
    assert (out / "s3.objects.csv").read_text() == ",".join(O.OBJECT_COLUMNS) + "\n"
    (summary,) = _read_csv(out / "s3.summary.csv")
    assert summary["objects"] == "0" and summary["tissue_px"] == "" and summary["density_per_mm2_tissue"] == ""
    assert summary["um_per_px_x"] == "0.5"
    assert (out / "s3.sizes.png").exists()


# ---------------------------------------------------------------- object-level evaluation


def _discs(shape, discs) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.uint8)
    for y, x, r in discs:
        mask[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1
    return mask


def test_decode_downsampled_samples_cell_centres():
    rng = np.random.default_rng(3)
    mask = (rng.random((103, 77)) > 0.6).astype(np.uint8)
    got = decode_downsampled(encode(mask), mask.shape, 4, block=50)  # several column blocks
    rows, cols = np.minimum(np.arange(26) * 4 + 2, 102), np.minimum(np.arange(20) * 4 + 2, 76)
    np.testing.assert_array_equal(got, mask[np.ix_(rows, cols)].astype(bool))
    assert not decode_downsampled("", (103, 77), 4).any()


def test_match_objects_iou_threshold_and_one_to_one():
    truth = np.zeros((20, 40), np.int32)
    truth[0:10, 0:10] = 1  # 100 px
    pred = np.zeros_like(truth)
    pred[0:10, 0:5] = 1  # 50 px inside: IoU exactly 0.5 -> a match
    assert O.match_objects(pred, 1, truth, 1) == 1
    pred[0:10, 4] = 0  # 40 px: IoU 0.4 -> none
    assert O.match_objects(pred, 1, truth, 1) == 0
    # one prediction over two true objects matches at most one of them
    truth[0:10, 20:22] = 2
    both = np.zeros_like(truth)
    both[0:10, 0:22] = 1
    assert O.match_objects(both, 1, truth, 2) == 0  # IoU 100/220 and 20/220
    both[0:10, 10:22] = 0
    both[0:10, 20:22] = 2
    assert O.match_objects(both, 2, truth, 2) == 2


def test_object_scores_from_rles():
    shape = (400, 600)
    a, b = (100, 120, 40), (260, 420, 40)
    truth = encode(_discs(shape, [a, b]))
    same = O.object_scores(truth, truth, shape)
    assert (same.predicted, same.truth, same.matched, same.f1) == (2, 2, 2, 1.0)
    extra = O.object_scores(encode(_discs(shape, [a, (300, 100, 35)])), encode(_discs(shape, [a])), shape)
    assert (extra.precision, extra.recall) == (0.5, 1.0) and extra.f1 == pytest.approx(2 / 3)
    near = O.object_scores(encode(_discs(shape, [(100, 130, 40)])), encode(_discs(shape, [a])), shape)
    assert near.matched == 1  # 10 px off: IoU ~0.73
    far = O.object_scores(encode(_discs(shape, [(100, 150, 40)])), encode(_discs(shape, [a])), shape)
    assert (far.matched, far.precision, far.recall, far.f1) == (0, 0.0, 0.0, 0.0)  # 30 px off: IoU ~0.36
    empty = O.object_scores("", "", shape)
    assert (empty.precision, empty.recall, empty.f1) == (1.0, 1.0, 1.0)
    missed = O.object_scores("", truth, shape)
    assert (missed.precision, missed.recall, missed.f1) == (0.0, 0.0, 0.0)


def test_evaluation_adds_object_scores_and_their_means(tmp_path):
    data = tmp_path / "data"
    shape = (400, 600)
    truths = {"t1": [(100, 120, 40), (260, 420, 40)], "t2": [(100, 120, 40)]}
    for slide_id in truths:
        _slide(data / "test" / f"{slide_id}.tiff", *shape)
    pd.DataFrame({"id": list(truths), "encoding": [encode(_discs(shape, d)) for d in truths.values()]}).to_csv(
        data / "test_truth.csv", index=False
    )
    predicted = {"t1": truths["t1"], "t2": [(100, 120, 40), (300, 450, 30)]}
    submission = tmp_path / "submission.csv"
    pd.DataFrame({"id": list(predicted), "predicted": [encode(_discs(shape, d)) for d in predicted.values()]}).to_csv(
        submission, index=False
    )
    table = evaluate_submission(data, submission, tmp_path / "dice.csv")
    written = pd.read_csv(tmp_path / "dice.csv").set_index("id")
    assert list(written.columns[:4]) == ["dice", "precision", "recall", "f1"]
    assert written.loc["t1", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    assert written.loc["t2", ["precision", "recall"]].tolist() == [0.5, 1.0]
    assert written.loc["t2", "f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert written.loc["t2", "predicted_objects"] == 2 and written.loc["t2", "truth_objects"] == 1
    assert written.loc["mean", "precision"] == 0.75 and written.loc["mean", "recall"] == 1.0
    assert written.loc["mean", "f1"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-6)
    assert written.loc["mean", "dice"] == pytest.approx(table["dice"].iloc[:2].mean(), abs=1e-6)
    truth_t1 = decode(encode(_discs(shape, truths["t1"])), shape)
    assert written.loc["t1", "truth_area"] == truth_t1.sum()
