"""The out-of-fold threshold: ``predict.threshold: auto``.

A model trained on a few slides is rarely calibrated, so 0.5 is not always the
probability that separates glomerulus from tissue best. The threshold is chosen
where it is used: on whole slides. :mod:`pipeline.oof` runs the real predictor
(consensus, TTA) of each fold over that fold's validation slides, upsamples the
map exactly as encoding does and counts, for every threshold of :data:`GRID`,
the predicted and the correctly predicted full-resolution pixels against the
slide's truth (:class:`ThresholdCounts`). The threshold with the highest *mean
per-slide* Dice (Kaggle's score) over all out-of-fold slides wins; the predict
stage records it, and the Dice it came from, in the prediction store's attrs and
encoding reads it from there. Choosing it never looks at a test slide.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_text_atomic
from pipeline.errors import ConfigError, DataError
from pipeline.metrics import dice_from_counts

AUTO = "auto"
#: candidate thresholds, 0.05 .. 0.95
GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
STORE_ATTR = "threshold"
SOURCE_ATTR = "threshold_source"


class ThresholdCounts:
    """Pixel counts of ``prob >= t`` against the truth for every ``t`` of a grid, accumulated block by block."""

    def __init__(self, grid: Sequence[float] = GRID) -> None:
        self.grid = np.asarray(sorted(float(t) for t in grid), np.float64)
        self.intersection = np.zeros(len(self.grid), np.int64)
        self.predicted = np.zeros(len(self.grid), np.int64)
        self.truth = 0

    def add(self, prob: np.ndarray | None, truth: np.ndarray) -> None:
        """Count one block: ``prob`` in [0, 1] (None: nothing reaches the lowest threshold) and its truth."""
        positive = np.asarray(truth) != 0
        self.truth += int(np.count_nonzero(positive))
        if prob is None:
            return
        # how many thresholds each pixel reaches: pixels reaching grid[i] count for every t <= grid[i]
        reached = np.searchsorted(self.grid, np.asarray(prob, np.float32).ravel(), side="right")
        n = len(self.grid) + 1
        per_level = np.bincount(reached, minlength=n)
        per_level_pos = np.bincount(reached[positive.ravel()], minlength=n)
        self.predicted += np.cumsum(per_level[::-1])[::-1][1:]
        self.intersection += np.cumsum(per_level_pos[::-1])[::-1][1:]

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and ints (CSV / JSON friendly)."""
        return {"grid": [round(float(t), 6) for t in self.grid], "intersection": self.intersection.tolist(),
                "predicted": self.predicted.tolist(), "truth": int(self.truth)}


def dice_curve(counts: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``[(threshold, Dice)]`` of one slide's counts (``ThresholdCounts.as_dict()``)."""
    return [
        (float(t), dice_from_counts(int(inter), int(pred), int(counts["truth"])))
        for t, inter, pred in zip(counts["grid"], counts["intersection"], counts["predicted"], strict=True)
    ]


def mean_dice_curve(per_slide: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """``[(threshold, mean Dice over slides)]``: Kaggle's score at each threshold. Slides share one grid."""
    if not per_slide:
        raise ValueError("mean_dice_curve: no slides")
    grid = [float(t) for t in per_slide[0]["grid"]]
    if any([float(t) for t in c["grid"]] != grid for c in per_slide[1:]):
        raise ValueError("mean_dice_curve: slides were scored on different threshold grids")
    curves = np.array([[d for _, d in dice_curve(c)] for c in per_slide])
    return list(zip(grid, curves.mean(axis=0).tolist(), strict=True))


def best_threshold(per_slide: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(threshold, mean per-slide Dice) of the best threshold; ties go to the one nearest 0.5."""
    return max(mean_dice_curve(per_slide), key=lambda td: (round(td[1], 12), -abs(td[0] - 0.5)))


def check_setting(value: float | str) -> None:
    """``predict.threshold`` is a probability in (0, 1) or "auto"; ConfigError otherwise."""
    if isinstance(value, str):
        if value != AUTO:
            raise ConfigError(None, f"predict.threshold: a number in (0, 1) or {AUTO!r}, got {value!r}")
    elif not 0.0 < float(value) < 1.0:
        raise ConfigError(None, f"predict.threshold: must be in (0, 1), got {value}")


def write_choice(path: str | Path, threshold: float, source: str, **extra: Any) -> None:
    """``threshold.json``: the chosen threshold, where it came from, and what it scored (atomic)."""
    write_text_atomic(path, json.dumps({STORE_ATTR: float(threshold), SOURCE_ATTR: source, **extra}, indent=2) + "\n")


def read_choice(path: str | Path) -> dict[str, Any]:
    """The store attrs of a ``threshold.json`` written by :func:`write_choice`, checked."""
    path = Path(path)
    try:
        choice = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read the out-of-fold threshold: {err}") from None
    value = choice.get(STORE_ATTR) if isinstance(choice, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise DataError(path, f"holds no threshold in (0, 1): {str(choice)[:200]}")
    return {STORE_ATTR: float(value), SOURCE_ATTR: str(choice.get(SOURCE_ATTR, path))}


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
