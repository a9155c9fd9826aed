"""Report figures: training curves, low-res RLE rasterisation, overlays, summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import report as R
from pipeline.errors import DataError
from pipeline.rle import encode

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def disks(height, width, items):
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), bool)
    for cy, cx, r in items:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def test_plot_curves_writes_a_png(tmp_path):
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame(
        {"epoch": [1, 2, 3], "train_loss": [0.9, 0.6, 0.5], "val_loss": [1.0, 0.7, 0.65], "val_dice": [0.3, 0.6, 0.7]}
    ).to_csv(metrics, index=False)
    out = tmp_path / "figs" / "curves.png"
    R.plot_curves(metrics, out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    w, h = Image.open(out).size
    assert (w, h) == (1000, 400)
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left


def test_plot_curves_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.csv"):
        R.plot_curves(tmp_path / "missing.csv", tmp_path / "c.png")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"epoch": [1], "lr": [0.1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="no loss or dice"):
        R.plot_curves(bad, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("thumb", [(30, 40), (17, 23), (300, 400)])
def test_rle_to_thumbnail_samples_the_decoded_mask(thumb):
    rng = np.random.default_rng(0)
    mask = rng.random((300, 400)) < 0.3
    mask[:, 120:180] = True  # runs spanning whole columns (and column ends)
    th, tw = thumb
    rows = np.minimum(((np.arange(th) + 0.5) * 300 / th).astype(int), 299)
    cols = np.minimum(((np.arange(tw) + 0.5) * 400 / tw).astype(int), 399)
    want = mask[np.ix_(rows, cols)]
    np.testing.assert_array_equal(R.rle_to_thumbnail(encode(mask), (300, 400), thumb), want)
    assert not R.rle_to_thumbnail("", (300, 400), thumb).any()
    assert not R.rle_to_thumbnail(None, (300, 400), thumb).any()


def test_overlay_outlines_prediction_and_truth(tmp_path):
    shape = (800, 1000)
    truth = disks(*shape, [(200, 200, 80), (600, 700, 120)])
    pred = disks(*shape, [(210, 210, 80), (400, 500, 60)])
    thumb = np.full((100, 125, 3), 230, np.uint8)
    out = tmp_path / "o.png"
    R.overlay_png(thumb, encode(pred), encode(truth), shape, out)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[:2] == (100 + 16, 125)  # thumbnail + legend strip
    body = img[:100]
    is_pred = (body == R.PRED_COLOUR).all(axis=2)
    is_truth = (body == R.TRUTH_COLOUR).all(axis=2)
    assert is_pred.sum() > 20 and is_truth.sum() > 20
    # outlines only, at the right places: the predicted disk at (400, 500) -> (50, 62.5), radius 7.5
    assert is_pred[50, 62 - 8 : 62 + 9].any() and not is_pred[48:53, 60:65].any()
    assert not is_truth[35:65, 50:75].any()  # no truth there
    assert is_truth[75, 87 - 15 : 87 - 13].any()  # left edge of the big true disk
    R.overlay_png(thumb, "", None, shape, tmp_path / "empty.png")
    empty = np.asarray(Image.open(tmp_path / "empty.png").convert("RGB"))[:100]
    assert (empty == 230).all()


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_write_summary(tmp_path, suffix):
    scores = pd.DataFrame({"id": ["aa11", "bb22"], "dice": [0.9, 0.8], "objects": [12, 7]})
    (tmp_path / "pred").mkdir()
    out = tmp_path / "eval" / f"summary{suffix}"
    R.write_summary(scores, out, images={"aa11": tmp_path / "pred" / "aa11.png"})
    text = out.read_text()
    assert "0.8500" in text and "aa11" in text and "bb22" in text
    assert "../pred/aa11.png" in text
    with pytest.raises(DataError):
        R.write_summary(scores.drop(columns="dice"), out)
