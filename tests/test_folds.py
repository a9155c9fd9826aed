"""Folds grouped by donor (HuBMAP-20-dataset_information.csv), else by slide."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, DataError
from pipeline.folds import DATASET_INFO_CSV, assign_folds, fold_assignment, slide_groups, validation_slides


def test_assign_folds_grouped_by_slide_and_seeded() -> None:
    ids = ["b", "a", "c", "a", "d", "e", "b"]
    folds = assign_folds(ids, 2, seed=1)
    assert sorted(folds) == ["a", "b", "c", "d", "e"]  # one fold per slide, never split
    assert sorted(np.bincount(list(folds.values())).tolist()) == [2, 3]
    assert assign_folds(list(reversed(ids)), 2, seed=1) == folds  # order of input does not matter
    assert any(assign_folds(ids, 2, seed=s) != folds for s in range(2, 10))
    assert set(assign_folds(ids, 1, seed=0).values()) == {0}
    with pytest.raises(ConfigError, match="train.folds=4 but only 2 training slide"):
        assign_folds(["x", "y", "x"], 4, seed=0)


def _info(data_dir: Path, donors: dict[str, str]) -> None:
    with open(data_dir / DATASET_INFO_CSV, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_file", "width_pixels", "height_pixels", "patient_number"])
        for slide, donor in donors.items():
            writer.writerow([f"{slide}.tiff", 1024, 1024, donor])


def test_a_donor_never_spans_training_and_validation(tmp_path: Path) -> None:
    """Eight slides of four donors (one donor with four slides): every donor is wholly in one fold."""
    from pipeline.synthetic import make_dataset

    make_dataset(tmp_path, n_train=8, n_test=1, height=512, width=512, seed=5)
    train_ids = sorted(p.stem for p in (tmp_path / "train").glob("*.tiff"))
    donors = dict(zip(train_ids, ["67347", "67347", "67347", "67347", "68138", "68138", "63921", "65631"],
                      strict=True))
    test_id = next((tmp_path / "test").glob("*.tiff")).stem
    _info(tmp_path, {**donors, test_id: "99999"})  # the test slide's donor does not matter
    for folds in (2, 3, 4):
        for seed in range(6):
            assignment = fold_assignment(tmp_path, train_ids, folds, seed)
            assert sorted(assignment) == train_ids
            for donor in set(donors.values()):
                assert len({assignment[s] for s in train_ids if donors[s] == donor}) == 1, (folds, seed, donor)
            for fold in range(folds):
                val = validation_slides(assignment, fold, folds)
                assert val, f"fold {fold} of {folds} validates on nothing"
                assert not {donors[s] for s in val} & {donors[s] for s in train_ids if s not in val}
    with pytest.raises(ConfigError, match="train.folds=5 but only 4 donor"):
        fold_assignment(tmp_path, train_ids, 5, 0)
    # the largest donor goes first, the others balance around it
    assignment = fold_assignment(tmp_path, train_ids, 2, 0)
    assert sorted(np.bincount(list(assignment.values())).tolist()) == [4, 4]


def test_groups_fall_back_to_the_slide(tmp_path: Path, caplog) -> None:
    assert slide_groups(tmp_path, ["b", "a"]) == {"a": "slide:a", "b": "slide:b"}  # no table
    _info(tmp_path, {"a": "1", "b": ""})
    assert slide_groups(tmp_path, ["a", "b", "c"]) == {"a": "donor:1", "b": "slide:b", "c": "slide:c"}
    assert "b, c" in caplog.text
    (tmp_path / DATASET_INFO_CSV).write_text("image_file,width_pixels\na.tiff,5\n")  # no donor column
    assert slide_groups(tmp_path, ["a"]) == {"a": "slide:a"}
    (tmp_path / DATASET_INFO_CSV).write_text("slide,patient_number\na,1\n")
    with pytest.raises(DataError, match=f"{DATASET_INFO_CSV}.*image_file"):
        slide_groups(tmp_path, ["a"])
    assert validation_slides({"a": 0, "b": 0}, 0, 1) == []
