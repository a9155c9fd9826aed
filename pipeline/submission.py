"""The Kaggle submission and its evaluation, both straight from RLE strings.

The submission has one row per test slide (``id,predicted``) in the order of
``sample_submission.csv``; a slide without a prediction gets ``""`` and a
warning naming it (or an error, ``submit.on_missing: fail``). Evaluation
computes Dice per slide from the run lists and object-level precision, recall and
F1 from masks sampled at 1/4, never from full masks.
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

#: Columns of ``evaluation/dice.csv``; the mean row averages SCORE_COLUMNS.
SCORE_COLUMNS = ("dice", "precision", "recall", "f1")
EVALUATION_COLUMNS = ("id", *SCORE_COLUMNS, "predicted_area", "truth_area", "predicted_objects", "truth_objects")


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
    """Dice and object-level precision, recall, F1 per slide wherever truth is known; last row = mean.

    Truth comes from test_truth.csv and train.csv. Dice is computed from the run lists;
    the object scores (:func:`pipeline.objects.object_scores`: a predicted glomerulus
    matches a true one at IoU >= 0.5, one-to-one) from both masks sampled at 1/4
    (:data:`~pipeline.objects.OBJECT_DOWNSAMPLE`), never at full resolution. The mean
    row holds the mean of each score column (dice, precision, recall, f1).
    """
    from pipeline.metrics import dice_rle
    from pipeline.objects import object_scores
    from pipeline.rle import area, parse
    from pipeline.slides import open_slide

    data_dir = Path(data_dir)
    truth, truth_file = {}, {}
    for table_path in (data_dir / TRAIN_CSV, data_dir / TEST_TRUTH_CSV):  # test_truth.csv wins
        encodings = read_encodings(table_path)
        truth.update(encodings)
        truth_file.update(dict.fromkeys(encodings, table_path))
    predicted = read_encodings(submission_csv)
    paths = {s.id: s.path for s in discover_slides(data_dir)}
    rows = []
    for slide_id, pred in predicted.items():
        if slide_id not in truth:
            continue
        with open_slide(paths[slide_id], backend=backend) as reader:
            shape = reader.shape
        pred_runs = parse(pred, shape, f"{submission_csv}: {slide_id}")
        truth_runs = parse(truth[slide_id], shape, f"{truth_file[slide_id]}: {slide_id}")
        dice = dice_rle(pred_runs, truth_runs, shape)
        objects = object_scores(pred_runs, truth_runs, shape)
        rows.append(
            {
                "id": slide_id,
                "dice": round(dice, 6),
                "precision": round(objects.precision, 6),
                "recall": round(objects.recall, 6),
                "f1": round(objects.f1, 6),
                "predicted_area": area(pred_runs),
                "truth_area": area(truth_runs),
                "predicted_objects": objects.predicted,
                "truth_objects": objects.truth,
            }
        )
        log.info(
            "%s: Dice %.4f, objects: %d predicted, %d true, %d matched (precision %.3f, recall %.3f, F1 %.3f)",
            slide_id, dice, objects.predicted, objects.truth, objects.matched,
            objects.precision, objects.recall, objects.f1,
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=EVALUATION_COLUMNS)
    if rows:
        mean = {"id": "mean", **{c: round(float(table[c].mean()), 6) for c in SCORE_COLUMNS}}
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
        log.info("mean over %d slide(s): Dice %.4f, object F1 %.4f", len(rows), mean["dice"], mean["f1"])
    else:
        log.warning("%s: no slide of the submission has a known truth", submission_csv)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
