"""Whole-slide out-of-fold validation: the number Kaggle scores, on slides no model trained on.

Once a fold's model is trained, :func:`run_oof_slide` runs the real predictor
(:func:`pipeline.predict.predict_slide`: windows over the tissue, Gaussian
consensus, the configured TTA) with *that fold's model only* over each slide the
fold validated on, keeps the map (``oof/{id}.zarr``) and counts, for every
threshold of :data:`pipeline.thresholds.GRID`, the full-resolution pixels it
would predict and those it would get right (``oof/{id}.csv``). The map is
upsampled exactly as :mod:`pipeline.encode` does, strip by strip, against the
slide's truth decoded strip by strip, so no full-resolution mask is ever built.

:func:`summarise` pools every out-of-fold slide: it picks the threshold of the best
mean per-slide Dice (``predict.threshold: auto``) or takes the configured one,
encodes each map with it and the configured post-processing, and scores the Kaggle
Dice of the RLE against the truth: ``evaluation/oof.csv`` (one row per slide, then
the mean), the curve ``evaluation/oof_thresholds.csv`` and ``evaluation/threshold.json``
(what the predict stage records for ``auto``).

Leakage guard: a checkpoint records the slides its fold validated on, and scoring
any other slide with it is an error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import rle
from pipeline.atomic import write_csv_atomic
from pipeline.encode import column_strips, encode_prediction_full, open_prediction, strip_width, upsampled_blocks
from pipeline.errors import DataError
from pipeline.progress import get_logger
from pipeline.thresholds import (
    AUTO,
    GRID,
    ThresholdCounts,
    best_threshold,
    check_setting,
    dice_curve,
    mean_dice_curve,
    write_choice,
)

if TYPE_CHECKING:
    from pipeline.config import Config

log = get_logger(__name__)

COUNT_COLUMNS = ["slide", "fold", "threshold", "intersection", "predicted", "truth"]
OOF_COLUMNS = ["slide", "fold", "dice", "predicted_area", "truth_area", "threshold"]
CURVE_COLUMNS = ["threshold", "mean_dice", "pooled_dice"]


# ---------------------------------------------------------------- truth and counts


def slide_truth_rle(data_dir: str | Path, slide_id: str, shape: tuple[int, int]) -> str:
    """A training slide's truth as RLE: its ``train.csv`` row, else its polygons rasterised strip by strip."""
    from pipeline.annotations import polygons_to_rle, read_polygons
    from pipeline.dataset import TRAIN_CSV, polygons_path, read_encodings

    encodings = read_encodings(Path(data_dir) / TRAIN_CSV)
    if slide_id in encodings:
        return encodings[slide_id]
    polygons = polygons_path(data_dir, slide_id)
    if polygons is None:
        raise DataError(Path(data_dir) / TRAIN_CSV, f"slide {slide_id!r} has no row here and no train/{slide_id}.json: "
                        "no truth to validate against")
    return polygons_to_rle(read_polygons(polygons), shape)


def count_thresholds(
    prob_zarr: str | os.PathLike[str] | Any,
    truth_runs: np.ndarray,
    upsample: str = "bilinear",
    grid: Sequence[float] = GRID,
) -> ThresholdCounts:
    """Full-resolution counts of ``prob >= t`` and ``prob >= t & truth`` for every ``t`` of ``grid``.

    ``prob_zarr`` is a prediction store (its attrs give the slide shape and scale);
    ``truth_runs`` the slide's truth (:func:`pipeline.rle.parse`). One column strip of
    the map and of the truth at a time.
    """
    arr = open_prediction(prob_zarr)
    height, width = (int(n) for n in arr.attrs["slide_shape"])
    scale = int(arr.attrs["scale"])
    counts = ThresholdCounts(grid)
    floor = float(min(grid))
    for c0, c1, block in column_strips(arr, strip_width(arr)):
        x0 = c0 * scale
        w = min(c1 * scale, width) - x0
        truth = rle.decode_window(truth_runs, (height, width), 0, x0, height, w)
        for r0, r1, probs in upsampled_blocks(block, scale, upsample, height, floor):
            counts.add(None if probs is None else probs[:, :w], truth[r0:r1])
    return counts


def _counts_rows(slide_id: str, fold: int, counts: dict[str, Any]) -> list[list[Any]]:
    return [[slide_id, fold, t, i, p, counts["truth"]]
            for t, i, p in zip(counts["grid"], counts["intersection"], counts["predicted"], strict=True)]


# ---------------------------------------------------------------- one slide


def run_oof_slide(
    slide_path: str | os.PathLike[str],
    slide_id: str,
    checkpoint: str | os.PathLike[str],
    tissue_png: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    out_zarr: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    config: Config,
) -> dict[str, Any]:
    """Stage entry point (``python -m pipeline oof``): one validation slide through its fold's model.

    Writes the consensus map ``out_zarr`` and the threshold counts ``out_csv``; returns the counts.
    """
    from pipeline.models import select_device
    from pipeline.predict import load_models, predict_slide
    from pipeline.slide_inputs import slide_inputs
    from pipeline.slides import open_slide
    from pipeline.tissue import load_tissue

    checkpoint = Path(checkpoint)
    cfg = config.predict
    check_setting(cfg.threshold)
    device = select_device(cfg.device)
    models, mean, std, metas = load_models([checkpoint], device, config)
    meta = metas[0]
    val_slides = [str(s) for s in meta.get("val_slides") or []]
    if slide_id not in val_slides:
        raise DataError(
            checkpoint,
            f"slide {slide_id!r} is not a validation slide of this fold (it validated on "
            f"{', '.join(val_slides) or 'none'}): its score would not be out of fold",
        )
    fold = int(meta.get("fold", -1))
    with open_slide(slide_path, backend=config.slides.backend) as reader:
        shape = (int(reader.shape[0]), int(reader.shape[1]))
        tissue = load_tissue(tissue_png, shape) if tissue_png else None
        normalise, mean, std, norm_attrs = slide_inputs(metas, [checkpoint], tissue, slide_path, mean, std)
        predict_slide(reader, models, tissue if cfg.tissue_only else None, cfg, out_zarr, mean, std, device,
                      slide_id=slide_id, normalise=normalise,
                      extra_attrs={"fold": fold, "checkpoint": str(checkpoint), "out_of_fold": True, **norm_attrs})
    truth = rle.parse(slide_truth_rle(data_dir, slide_id, shape), shape, source=f"truth of {slide_id}")
    counts = count_thresholds(out_zarr, truth, cfg.upsample).as_dict()
    write_csv_atomic(out_csv, COUNT_COLUMNS, _counts_rows(slide_id, fold, counts))
    raw = dict(dice_curve(counts))
    log.info("%s (fold %d): %d truth px; Dice at 0.5 before post-processing %.4f", slide_id, fold, counts["truth"],
             raw.get(0.5, float("nan")))
    return counts


# ---------------------------------------------------------------- all slides


def read_counts(paths: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, Any]]:
    """Slide -> counts dict (with ``fold``) from the per-slide CSVs of :func:`run_oof_slide`."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            table = pd.read_csv(path, dtype={"slide": str})
        except (OSError, ValueError) as err:
            raise DataError(Path(path), f"cannot read out-of-fold counts: {err}") from err
        missing = [c for c in COUNT_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(Path(path), f"lacks column(s) {', '.join(missing)}")
        for slide, rows in table.groupby("slide", sort=True):
            rows = rows.sort_values("threshold")
            out[str(slide)] = {
                "fold": int(rows["fold"].iloc[0]),
                "grid": rows["threshold"].round(6).tolist(),
                "intersection": rows["intersection"].astype(np.int64).tolist(),
                "predicted": rows["predicted"].astype(np.int64).tolist(),
                "truth": int(rows["truth"].iloc[0]),
            }
    return out


def _pooled_curve(per_slide: Sequence[dict[str, Any]]) -> list[float]:
    from pipeline.metrics import dice_from_counts

    inter = np.sum([c["intersection"] for c in per_slide], axis=0)
    pred = np.sum([c["predicted"] for c in per_slide], axis=0)
    truth = sum(c["truth"] for c in per_slide)
    return [dice_from_counts(int(i), int(p), truth) for i, p in zip(inter, pred, strict=True)]


def summarise(
    counts_csvs: Sequence[str | os.PathLike[str]],
    oof_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_oof_csv: str | os.PathLike[str],
    out_curve_csv: str | os.PathLike[str],
    out_choice_json: str | os.PathLike[str],
    config: Config,
) -> pd.DataFrame:
    """Stage entry point (``python -m pipeline oof-summary``): choose the threshold, score every slide.

    The Dice per slide is the Kaggle Dice of the RLE that :mod:`pipeline.encode` makes of
    the out-of-fold map (threshold, post-processing, upsampling as configured) against
    the truth. Returns the ``oof.csv`` table (last row: the mean).
    """
    from pipeline.metrics import dice_rle

    cfg = config.predict
    check_setting(cfg.threshold)
    per_slide = read_counts(counts_csvs)
    slides = sorted(per_slide)
    if not slides:
        threshold = 0.5 if cfg.threshold == AUTO else float(cfg.threshold)
        log.warning("no out-of-fold slides (train.folds 1, or no training slides): threshold %.2f unvalidated",
                    threshold)
        write_csv_atomic(out_curve_csv, CURVE_COLUMNS, [])
        write_csv_atomic(out_oof_csv, OOF_COLUMNS, [])
        write_choice(out_choice_json, threshold, "no out-of-fold slides: not validated", slides=0)
        return pd.DataFrame(columns=OOF_COLUMNS)
    curves = [per_slide[s] for s in slides]
    mean_curve = mean_dice_curve(curves)
    pooled = _pooled_curve(curves)
    write_csv_atomic(out_curve_csv, CURVE_COLUMNS,
                     [[t, round(d, 6), round(p, 6)] for (t, d), p in zip(mean_curve, pooled, strict=True)])
    at_half = dict(mean_curve).get(0.5)
    if cfg.threshold == AUTO:
        threshold, raw_dice = best_threshold(curves)
        log.info("predict.threshold auto: %.2f, mean out-of-fold Dice %.4f over %d slide(s)%s", threshold, raw_dice,
                 len(slides), f" ({at_half:.4f} at 0.5)" if at_half is not None else "")
    else:
        threshold = float(cfg.threshold)
    encode_cfg = dataclasses.replace(cfg, threshold=threshold)
    rows = []
    for slide in slides:
        store = Path(oof_dir) / f"{slide}.zarr"
        arr = open_prediction(store)
        shape = tuple(int(n) for n in arr.attrs["slide_shape"])
        predicted = encode_prediction_full(arr, shape, encode_cfg).rle
        truth = slide_truth_rle(data_dir, slide, shape)
        dice = dice_rle(predicted, truth, shape, source_a=str(store), source_b=f"truth of {slide}")
        rows.append([slide, per_slide[slide]["fold"], round(dice, 6), rle.area(predicted), rle.area(truth), threshold])
        log.info("%s (fold %d): out-of-fold Dice %.4f at threshold %.2f", slide, per_slide[slide]["fold"], dice,
                 threshold)
    table = pd.DataFrame(rows, columns=OOF_COLUMNS)
    mean = float(table["dice"].mean())
    folds = table["fold"].nunique()
    source = (f"out-of-fold mean Dice {mean:.4f} over {len(slides)} slide(s) of {folds} fold(s)"
              + (f" (best of {len(GRID)} thresholds; {at_half:.4f} at 0.5 before post-processing)"
                 if cfg.threshold == AUTO and at_half is not None else ""))
    log.info("out-of-fold mean Dice %.4f over %d slide(s) at threshold %.2f", mean, len(slides), threshold)
    table = pd.concat([table, pd.DataFrame([{"slide": "mean", "dice": round(mean, 6), "threshold": threshold}])],
                      ignore_index=True)
    write_csv_atomic(out_oof_csv, OOF_COLUMNS, table[OOF_COLUMNS].astype(object).where(table.notna(), "").values.tolist())
    write_choice(out_choice_json, threshold, source, oof_dice=round(mean, 6), slides=len(slides), folds=int(folds),
                 chosen=cfg.threshold == AUTO)
    return table


__all__ = ["count_thresholds", "read_counts", "run_oof_slide", "slide_truth_rle", "summarise"]
