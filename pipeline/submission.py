"""The Kaggle submission and its evaluation, both straight from RLE strings.

The submission has one row per test slide (``id,predicted``) in the order of
``sample_submission.csv``; a slide without a prediction gets ``""`` and a
warning naming it (or an error, ``submit.on_missing: fail``). Evaluation
computes Dice per slide from the run lists, never from full masks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.config import SubmitConfig
from pipeline.dataset import (
    SLIDE_ID_RULE,
    TEST_TRUTH_CSV,
    TRAIN_CSV,
    discover_slides,
    read_encodings,
    submission_order,
    unsupported_slide_files,
)
from pipeline.errors import DataError

log = logging.getLogger(__name__)


def read_rle_file(path: Path) -> str:
    """The single-line RLE a predict job wrote."""
    return path.read_text().strip()


def write_submission(
    data_dir: str | Path, predictions_dir: str | Path, out_csv: str | Path, cfg: SubmitConfig
) -> pd.DataFrame:
    """Write ``submission.csv`` from ``predictions_dir/{id}.rle`` for every test slide."""
    predictions_dir = Path(predictions_dir)
    test_ids = [s.id for s in discover_slides(data_dir) if s.split == "test"]
    ids = submission_order(data_dir, test_ids)
    for path in unsupported_slide_files(data_dir):
        if path.parent.name == "test":
            log.warning("%s: not predicted and not in the submission: unsupported file name: %s", path, SLIDE_ID_RULE)
    missing = [i for i in ids if not (predictions_dir / f"{i}.rle").exists()]
    if missing:
        message = f"no prediction for {len(missing)} slide(s): {', '.join(missing)}"
        if cfg.on_missing == "fail":
            raise DataError(predictions_dir, message)
        log.warning("%s: %s; they get an empty mask in the submission", predictions_dir, message)
    predicted = ["" if i in missing else read_rle_file(predictions_dir / f"{i}.rle") for i in ids]
    table = pd.DataFrame({"id": ids, "predicted": predicted})
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%d slides (%d missing) -> %s", len(table), len(missing), out_csv)
    return table


def evaluate_submission(
    data_dir: str | Path, submission_csv: str | Path, out_csv: str | Path, backend: str = "tifffile"
) -> pd.DataFrame:
    """Dice per slide wherever truth is known (test_truth.csv, train.csv); last row = mean."""
    from pipeline.metrics import dice_rle
    from pipeline.rle import area
    from pipeline.slides import open_slide

    data_dir = Path(data_dir)
    truth = {**read_encodings(data_dir / TRAIN_CSV), **read_encodings(data_dir / TEST_TRUTH_CSV)}
    predicted = read_encodings(submission_csv)
    paths = {s.id: s.path for s in discover_slides(data_dir)}
    rows = []
    for slide_id, pred in predicted.items():
        if slide_id not in truth:
            continue
        with open_slide(paths[slide_id], backend=backend) as reader:
            shape = reader.shape
        dice = dice_rle(pred, truth[slide_id], shape)
        rows.append(
            {
                "id": slide_id,
                "dice": round(dice, 6),
                "predicted_area": area(pred),
                "truth_area": area(truth[slide_id]),
            }
        )
        log.info("%s: Dice %.4f", slide_id, dice)
    table = pd.DataFrame(rows, columns=["id", "dice", "predicted_area", "truth_area"])
    if rows:
        mean = {"id": "mean", "dice": round(float(table["dice"].mean()), 6)}
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
        log.info("mean Dice over %d slide(s): %.4f", len(rows), mean["dice"])
    else:
        log.warning("%s: no slide of the submission has a known truth", submission_csv)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
