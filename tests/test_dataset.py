"""Slide discovery, truth tables, the submission and its evaluation from RLE strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pipeline.config import SubmitConfig
from pipeline.dataset import discover_slides, read_encodings, submission_order, truth_rle
from pipeline.errors import DataError
from pipeline.rle import encode
from pipeline.submission import evaluate_submission, write_submission


def _slide(path: Path, height: int = 64, width: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((height, width, 3), 200, np.uint8), photometric="rgb")


def test_discovery_lists_slides_by_split_and_ignores_other_files(tmp_path: Path) -> None:
    for name in ("train/b.tiff", "train/a.tiff", "test/c.tiff", "test/d.svs"):
        _slide(tmp_path / name)
    (tmp_path / "train" / "a.json").write_text("[]")
    (tmp_path / "test" / ".c.tiff.partial").write_text("")
    found = [(s.split, s.id) for s in discover_slides(tmp_path)]
    assert found == [("train", "a"), ("train", "b"), ("test", "c"), ("test", "d")]


def test_the_same_id_twice_is_an_error(tmp_path: Path) -> None:
    _slide(tmp_path / "train" / "x.tiff")
    _slide(tmp_path / "test" / "x.tiff")
    with pytest.raises(DataError, match="slide id 'x' also at"):
        discover_slides(tmp_path)


def test_encodings_table_errors_name_the_file(tmp_path: Path) -> None:
    table = tmp_path / "train.csv"
    table.write_text("id,wrong\na,1 2\n")
    with pytest.raises(DataError, match="train.csv: expected columns id,encoding"):
        read_encodings(table)
    table.write_text("id,encoding\na,1 2\na,3 4\n")
    with pytest.raises(DataError, match="listed twice: a"):
        read_encodings(table)


def _kaggle_dir(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    masks = {}
    for slide_id in ("t1", "t2", "t3"):
        _slide(tmp_path / "test" / f"{slide_id}.tiff")
        masks[slide_id] = (rng.random((64, 48)) > 0.7).astype(np.uint8)
    pd.DataFrame({"id": ["t3", "t1", "t2"], "predicted": ""}).to_csv(tmp_path / "sample_submission.csv", index=False)
    truth = pd.DataFrame({"id": list(masks), "encoding": [encode(m) for m in masks.values()]})
    truth.to_csv(tmp_path / "test_truth.csv", index=False)
    return tmp_path, masks


def test_submission_follows_sample_order_and_warns_about_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, masks = _kaggle_dir(tmp_path / "data")
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "t1.rle").write_text(encode(masks["t1"]) + "\n")
    (predictions / "t3.rle").write_text("\n")
    table = write_submission(data_dir, predictions, tmp_path / "submission.csv", SubmitConfig())
    assert table["id"].tolist() == ["t3", "t1", "t2"]
    written = pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False)
    assert written["predicted"].tolist() == ["", encode(masks["t1"]), ""]
    assert "no prediction for 1 slide(s): t2" in caplog.text
    assert submission_order(data_dir, ["t2", "zz"]) == ["t3", "t1", "t2", "zz"]
    assert truth_rle(data_dir, "t2") == encode(masks["t2"])


def test_submission_can_fail_instead(tmp_path: Path) -> None:
    data_dir, _ = _kaggle_dir(tmp_path / "data")
    (tmp_path / "predictions").mkdir()
    with pytest.raises(DataError, match="no prediction for 3 slide"):
        write_submission(data_dir, tmp_path / "predictions", tmp_path / "s.csv", SubmitConfig(on_missing="fail"))
    assert not (tmp_path / "s.csv").exists()


def test_evaluation_dice_per_slide_and_mean(tmp_path: Path) -> None:
    data_dir, masks = _kaggle_dir(tmp_path / "data")
    half = masks["t2"].copy()
    half[:32] = 0
    submission = tmp_path / "submission.csv"
    pd.DataFrame(
        {"id": ["t1", "t2", "t3"], "predicted": [encode(masks["t1"]), encode(half), ""]}
    ).to_csv(submission, index=False)
    table = evaluate_submission(data_dir, submission, tmp_path / "dice.csv").set_index("id")
    expected_t2 = 2 * half.sum() / (half.sum() + masks["t2"].sum())
    assert table.loc["t1", "dice"] == 1.0
    assert table.loc["t2", "dice"] == pytest.approx(expected_t2, abs=1e-6)
    assert table.loc["t3", "dice"] == 0.0
    assert table.loc["mean", "dice"] == pytest.approx((1 + expected_t2) / 3, abs=1e-6)
