"""The out-of-fold threshold: ``predict.threshold: auto``.

A model trained from scratch on a few slides is rarely calibrated, so 0.5 is not
always the probability that separates glomerulus from tissue best. Each fold
scores its own validation tiles (slides it never trained on) at a grid of
thresholds once training ends, with its best checkpoint, and stores the pixel
counts in ``model.pt`` (``oof_thresholds``) and ``thresholds.csv``. The predict
stage pools the counts of the ensemble's folds (so every validation tile weighs
the same), picks the threshold of the highest pooled Dice and records it in the
prediction store's attrs; the encode stage reads it from there. Choosing it never
looks at a test slide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import write_csv_atomic
from pipeline.errors import ConfigError, DataError
from pipeline.metrics import dice_from_counts
from pipeline.progress import get_logger

log = get_logger(__name__)

AUTO = "auto"
#: candidate thresholds, 0.05 .. 0.95
GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
STORE_ATTR = "threshold"


class ThresholdCounts:
    """Pixel counts of ``prob >= t`` against the truth for every ``t`` of a grid, accumulated over batches."""

    def __init__(self, grid: Sequence[float] = GRID) -> None:
        self.grid = tuple(float(t) for t in grid)
        self.intersection = [0] * len(self.grid)
        self.predicted = [0] * len(self.grid)
        self.truth = 0

    def add(self, prob: torch.Tensor, truth: torch.Tensor) -> None:
        """Count one batch: ``prob`` in [0, 1] and a same-shape truth (nonzero = glomerulus)."""
        positive = truth > 0
        self.truth += int(positive.sum())
        p_pos = prob[positive]
        for i, t in enumerate(self.grid):
            self.intersection[i] += int((p_pos >= t).sum())
            self.predicted[i] += int((prob >= t).sum())

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and ints: what goes into a checkpoint (``torch.load(weights_only=True)`` reads it)."""
        return {"grid": list(self.grid), "intersection": list(self.intersection),
                "predicted": list(self.predicted), "truth": int(self.truth)}


def dice_curve(counts: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``[(threshold, Dice)]`` of one set of counts (``ThresholdCounts.as_dict()`` or pooled)."""
    return [
        (float(t), dice_from_counts(inter, pred, counts["truth"]))
        for t, inter, pred in zip(counts["grid"], counts["intersection"], counts["predicted"], strict=True)
    ]


def pool(curves: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counts of several folds (all on the same grid)."""
    if not curves:
        raise ValueError("pool: no counts")
    grid = list(curves[0]["grid"])
    for c in curves[1:]:
        if list(c["grid"]) != grid:
            raise ValueError("pool: folds were scored on different threshold grids")
    return {
        "grid": grid,
        "intersection": [sum(c["intersection"][i] for c in curves) for i in range(len(grid))],
        "predicted": [sum(c["predicted"][i] for c in curves) for i in range(len(grid))],
        "truth": sum(int(c["truth"]) for c in curves),
    }


def best_threshold(curves: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(threshold, pooled Dice) of the highest pooled Dice; ties go to the threshold nearest 0.5."""
    scored = dice_curve(pool(curves))
    return max(scored, key=lambda td: (round(td[1], 12), -abs(td[0] - 0.5)))


def write_table(counts: Mapping[str, Any], path: str | Path) -> None:
    """``thresholds.csv``: threshold, Dice and the counts behind it (atomic)."""
    rows = [
        (t, round(d, 6), i, p, counts["truth"])
        for (t, d), i, p in zip(dice_curve(counts), counts["intersection"], counts["predicted"], strict=True)
    ]
    write_csv_atomic(path, ["threshold", "dice", "intersection", "predicted", "truth"], rows)


def check_setting(value: float | str) -> None:
    """``predict.threshold`` is a probability in (0, 1) or "auto"; ConfigError otherwise."""
    if isinstance(value, str):
        if value != AUTO:
            raise ConfigError(None, f"predict.threshold: a number in (0, 1) or {AUTO!r}, got {value!r}")
    elif not 0.0 < float(value) < 1.0:
        raise ConfigError(None, f"predict.threshold: must be in (0, 1), got {value}")


def choose(metas: Sequence[Mapping[str, Any]], sources: Sequence[Any]) -> dict[str, Any]:
    """Store attrs for "auto": the best pooled out-of-fold threshold of the ensemble's checkpoints.

    ``metas`` are the checkpoints' metadata (:func:`pipeline.models.load_model`); a
    checkpoint without counts (``train.folds: 1``, or written before this existed)
    adds nothing, and with none at all the threshold is 0.5, with a warning.
    """
    curves = [m["oof_thresholds"] for m in metas if m.get("oof_thresholds")]
    lacking = [str(src) for src, m in zip(sources, metas, strict=True) if not m.get("oof_thresholds")]
    if not curves:
        log.warning("predict.threshold auto: no checkpoint holds out-of-fold counts (%s; train.folds 1 "
                    "or older checkpoints): using 0.5", ", ".join(lacking))
        return {STORE_ATTR: 0.5, "threshold_source": "0.5: no out-of-fold counts"}
    if lacking:
        log.warning("predict.threshold auto: %s hold no out-of-fold counts; using the other folds'",
                    ", ".join(lacking))
    threshold, dice = best_threshold(curves)
    at_half = dict(dice_curve(pool(curves))).get(0.5)
    log.info("predict.threshold auto: %.2f, out-of-fold Dice %.4f over %d fold(s)%s", threshold, dice,
             len(curves), f" ({at_half:.4f} at 0.5)" if at_half is not None else "")
    return {STORE_ATTR: threshold, "threshold_source": f"out-of-fold Dice {dice:.4f} over {len(curves)} fold(s)"}


def store_threshold(setting: float | str, attrs: Mapping[str, Any], source: Any = None) -> float:
    """The threshold to encode with: the configured number, or for "auto" the one predict stored."""
    check_setting(setting)
    if setting != AUTO:
        return float(setting)
    if STORE_ATTR not in attrs:
        raise DataError(
            Path(source) if source is not None else None,
            "predict.threshold is 'auto' but this prediction store holds no threshold "
            "(written by an older version or with another setting): rerun the predict stage",
        )
    return float(attrs[STORE_ATTR])
