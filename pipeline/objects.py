"""Per-glomerulus results: one row per predicted object, a per-slide summary, object-level scores.

Objects are the 8-connected components of the low-res mask that
:func:`pipeline.encode.encode_prediction_full` returns: after post-processing, the
mask the full-resolution RLE is upsampled from, with the connectivity
post-processing uses. They are measured by labelling that mask with
``scipy.ndimage``, not from the GeoJSON polygons: those are traced 4-connected (an
object whose pixels touch at a corner is two polygons there) and simplified, and an
outline along pixel edges is a staircase whose length overestimates a perimeter by
up to 4/pi (a disc's GeoJSON outline has a circularity of ~0.7). So, per object:

* ``area_px``: its low-res pixels x scale^2 full-res px (a pixel past the slide's
  edge counts its part inside), which is what its unsimplified polygons enclose and
  within ~1 % of its area in the RLE for glomeruli (the RLE's border is interpolated);
* ``perimeter_px``: Crofton's estimate (boundary crossings along four directions),
  within ~1 % for a glomerulus-sized disc and ~6 % for a square, whatever their
  orientation; ``circularity`` = 4 pi area / perimeter^2, capped at 1 (specks of a
  few pixels would exceed it), so a disc's comes out at ~0.98-1;
* centroid and box: of its pixels, in the GeoJSON's full-res ``(x, y)`` (pixel
  ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``; the box is ``[x0, x1) x [y0, y1)``);
* ``mean_probability``: the stored map over its low-res pixels, read in row bands.

Nothing at full resolution is built: memory is the low-res mask plus its int32
labels (5 bytes per low-res pixel, 1/scale^2 of the slide), as post-processing takes.
:func:`object_scores` compares a prediction with the truth object by object (IoU >= 0.5,
one-to-one) on both RLEs sampled at 1/:data:`OBJECT_DOWNSAMPLE`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from pipeline.atomic import write_csv_atomic
from pipeline.errors import DataError
from pipeline.progress import get_logger

if TYPE_CHECKING:
    from pipeline.slides.resolution import PixelSize

log = get_logger(__name__)

OBJECT_COLUMNS = (
    "object_id", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
    "area_px", "area_um2", "perimeter_px", "circularity", "mean_probability",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "id", "objects", "um_per_px_x", "um_per_px_y", "tissue_px", "tissue_mm2",
    "density_per_mm2_tissue", "density_per_mpx_tissue", "median_area_px", "median_area_um2",
)  # fmt: skip
#: 8-connectivity, as :func:`pipeline.encode.postprocess` uses.
EIGHT = np.ones((3, 3), bool)
#: Low-res rows of the probability map read at a time.
PROB_BAND = 256
#: Object-level evaluation samples both masks at 1/4: glomeruli of 300-500 px stay 75-125 px
#: across (IoU within ~1-2 % of full resolution), and a 40,000 px slide is 10,000 px.
OBJECT_DOWNSAMPLE = 4
#: A predicted object matches a true one at IoU >= this (one-to-one).
MATCH_IOU = 0.5


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class SlideObject:
    """One predicted glomerulus, in full-resolution pixels (see the module docstring)."""

    object_id: int
    centroid_x: float
    centroid_y: float
    bbox_x0: int
    bbox_y0: int
    bbox_x1: int
    bbox_y1: int
    area_px: int
    area_um2: float | None
    perimeter_px: float
    circularity: float
    mean_probability: float | None

    def row(self) -> list[Any]:
        """The CSV row: rounded, "" for what is unknown."""
        return [
            self.object_id, round(self.centroid_x, 2), round(self.centroid_y, 2),
            self.bbox_x0, self.bbox_y0, self.bbox_x1, self.bbox_y1, self.area_px,
            "" if self.area_um2 is None else round(self.area_um2, 2),
            round(self.perimeter_px, 2), round(self.circularity, 4),
            "" if self.mean_probability is None else round(self.mean_probability, 4),
        ]  # fmt: skip


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """int32 labels of the 8-connected components of ``mask`` and their number."""
    labels, n = ndimage.label(np.asarray(mask, bool), structure=EIGHT)
    return labels, int(n)


def crofton_perimeter(obj: np.ndarray) -> float:
    """Perimeter of a binary shape in its pixels, by Crofton's formula over 4 directions.

    ``pi/8 * (n_0 + n_90 + (n_45 + n_135) / sqrt 2)``, ``n_d`` the in/out transitions
    along direction ``d`` (diagonal lines are 1/sqrt 2 apart): a disc of radius r gives
    2 pi r, where the pixel-edge outline gives 8r.
    """
    p = np.pad(np.asarray(obj, bool), 1)
    n0 = np.count_nonzero(p[:, 1:] != p[:, :-1])
    n90 = np.count_nonzero(p[1:] != p[:-1])
    n45 = np.count_nonzero(p[1:, 1:] != p[:-1, :-1])
    n135 = np.count_nonzero(p[1:, :-1] != p[:-1, 1:])
    return math.pi / 8.0 * (n0 + n90 + (n45 + n135) / math.sqrt(2.0))


def mean_probabilities(
    labels: np.ndarray, n: int, prob: Any, band: int = PROB_BAND, source: Any = None
) -> np.ndarray:
    """Mean of ``prob`` (the low-res map: Zarr, Dask or NumPy) over each label 1..n.

    Read ``band`` rows at a time, skipping bands without objects; never whole.
    ``source`` (the store's path) names it in errors.
    """
    if tuple(prob.shape) != labels.shape:
        raise DataError(source, f"probability map {tuple(prob.shape)} does not match the mask {labels.shape}")
    sums = np.zeros(n + 1)
    counts = np.zeros(n + 1, np.int64)
    has_object = labels.any(axis=1)
    for r0 in range(0, labels.shape[0], band):
        if not has_object[r0 : r0 + band].any():
            continue
        lab = labels[r0 : r0 + band]
        inside = lab > 0
        values = np.asarray(prob[r0 : r0 + band], np.float32)[inside]
        sums += np.bincount(lab[inside], weights=values, minlength=n + 1)
        counts += np.bincount(lab[inside], minlength=n + 1)
    return sums[1:] / np.maximum(counts[1:], 1)


def measure_objects(
    mask: np.ndarray,
    scale: int,
    slide_shape: tuple[int, int],
    prob: Any | None = None,
    pixel_size: PixelSize | None = None,
    source: Any = None,
) -> list[SlideObject]:
    """One :class:`SlideObject` per 8-connected component of the low-res ``mask``.

    ``mask`` is ``ceil(H/scale) x ceil(W/scale)`` for a ``slide_shape`` = (H, W) slide;
    ``prob`` the stored map of the same shape (None: no mean probability);
    ``pixel_size`` the slide's (None: no um^2); ``source`` names the map in errors.
    """
    height, width = (int(v) for v in slide_shape)
    scale = int(scale)
    mask = np.asarray(mask, bool)
    if mask.shape != (math.ceil(height / scale), math.ceil(width / scale)):
        raise ValueError(f"mask {mask.shape} is not a {height} x {width} slide at 1/{scale}")
    labels, n = label_objects(mask)
    if n == 0:
        return []
    means = mean_probabilities(labels, n, prob, source=source) if prob is not None else None
    um2 = pixel_size.area_um2 if pixel_size is not None else None
    out = []
    for i, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        obj = labels[rows, cols] == i
        r = np.arange(rows.start, rows.stop)
        c = np.arange(cols.start, cols.stop)
        wr = np.minimum(scale, height - r * scale).astype(np.float64)  # full-res rows per low-res row
        wc = np.minimum(scale, width - c * scale).astype(np.float64)
        weights = obj * wr[:, None] * wc[None, :]
        area = float(weights.sum())
        cy = float(weights.sum(axis=1) @ (r * scale + wr / 2)) / area
        cx = float(weights.sum(axis=0) @ (c * scale + wc / 2)) / area
        perimeter = crofton_perimeter(obj) * scale
        circularity = min(1.0, 4.0 * math.pi * area / perimeter**2) if perimeter > 0 else 0.0
        out.append(
            SlideObject(
                object_id=i, centroid_x=cx, centroid_y=cy,
                bbox_x0=cols.start * scale, bbox_y0=rows.start * scale,
                bbox_x1=min(cols.stop * scale, width), bbox_y1=min(rows.stop * scale, height),
                area_px=int(round(area)), area_um2=None if um2 is None else area * um2,
                perimeter_px=perimeter, circularity=circularity,
                mean_probability=None if means is None else float(means[i - 1]),
            )  # fmt: skip
        )
    return out


def write_objects_csv(objects: Sequence[SlideObject], path: str | os.PathLike[str]) -> None:
    """``{id}.objects.csv``: :data:`OBJECT_COLUMNS`, one row per object, atomically."""
    write_csv_atomic(path, OBJECT_COLUMNS, (o.row() for o in objects))


# ---------------------------------------------------------------- per-slide summary


def tissue_area_px(tissue_png: str | os.PathLike[str], slide_shape: tuple[int, int]) -> float:
    """Full-res pixels of tissue in a tissue-stage mask PNG (its cells x downsample^2).

    DataError naming the PNG when it is missing, unreadable or not of this slide.
    """
    from pipeline.tissue import load_tissue

    tissue = load_tissue(tissue_png, tuple(slide_shape))
    return float(np.count_nonzero(tissue.mask)) * tissue.downsample**2


def summarise(
    slide_id: str, objects: Sequence[SlideObject], tissue_px: float | None, pixel_size: PixelSize | None
) -> dict[str, Any]:
    """Count, density per mm^2 of tissue (with a pixel size) and per megapixel of tissue, median size.

    Unknown values are "": no pixel size -> no mm^2 columns; no tissue mask or no
    tissue -> no densities.
    """
    areas = np.array([o.area_px for o in objects], np.float64)
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, "")
    row.update(id=slide_id, objects=len(objects))
    if areas.size:
        row["median_area_px"] = round(float(np.median(areas)), 1)
    if pixel_size is not None:
        row.update(um_per_px_x=round(pixel_size.x_um, 6), um_per_px_y=round(pixel_size.y_um, 6))
        if areas.size:
            row["median_area_um2"] = round(float(np.median(areas)) * pixel_size.area_um2, 2)
    if tissue_px is not None:
        row["tissue_px"] = int(round(tissue_px))
        if tissue_px > 0:
            row["density_per_mpx_tissue"] = round(len(objects) / (tissue_px / 1e6), 6)
            if pixel_size is not None:
                mm2 = tissue_px * pixel_size.area_um2 / 1e6
                row.update(tissue_mm2=round(mm2, 4), density_per_mm2_tissue=round(len(objects) / mm2, 4))
        else:
            log.warning("%s: no tissue in the tissue mask: no density of glomeruli", slide_id)
    return row


def write_object_results(
    slide_id: str,
    mask: np.ndarray,
    scale: int,
    slide_shape: tuple[int, int],
    prob: Any,
    pixel_size: PixelSize | None,
    tissue_png: str | os.PathLike[str] | None,
    out_objects: str | os.PathLike[str] | None = None,
    out_summary: str | os.PathLike[str] | None = None,
    out_sizes_png: str | os.PathLike[str] | None = None,
) -> list[SlideObject]:
    """Measure the objects of one prediction and write whichever outputs are given, atomically.

    ``prob`` is the prediction store (its path, or an open array); ``tissue_png`` the
    tissue stage's mask (None: no densities). Outputs: the objects CSV, the one-row
    summary (:data:`SUMMARY_COLUMNS`) and the histogram of object areas (um^2 with a
    pixel size, else px), titled with the count and density.
    """
    source = prob if isinstance(prob, (str, os.PathLike)) else None
    if source is not None:
        from pipeline.encode import open_prediction

        prob = open_prediction(source)
    objects = measure_objects(mask, scale, slide_shape, prob, pixel_size, source)
    if out_objects is not None:
        write_objects_csv(objects, out_objects)
    tissue_px = tissue_area_px(tissue_png, slide_shape) if tissue_png is not None else None
    summary = summarise(slide_id, objects, tissue_px, pixel_size)
    if out_summary is not None:
        write_csv_atomic(out_summary, SUMMARY_COLUMNS, [[summary[c] for c in SUMMARY_COLUMNS]])
    if out_sizes_png is not None:
        from pipeline.report import plot_sizes

        if summary["density_per_mm2_tissue"] != "":
            density = f", {summary['density_per_mm2_tissue']:.2f} per mm² of tissue"
        elif summary["density_per_mpx_tissue"] != "":
            density = f", {summary['density_per_mpx_tissue']:.3f} per megapixel of tissue (pixel size unknown)"
        else:
            density = ""
        if pixel_size is not None:
            areas, unit = [o.area_um2 for o in objects], "µm²"
        else:
            areas, unit = [float(o.area_px) for o in objects], "px (pixel size unknown)"
        plot_sizes(areas, unit, f"{slide_id}: {len(objects)} glomeruli{density}", out_sizes_png)
    log.info("%s: %d objects measured (%s)", slide_id, len(objects),
             "um per px unknown" if pixel_size is None else f"{pixel_size.x_um:.4g} um per px")  # fmt: skip
    return objects


# ---------------------------------------------------------------- object-level evaluation


@dataclass(frozen=True)
class ObjectScores:
    """Objects of a prediction and of the truth, and how many matched one-to-one.

    Conventions for empty sides: no prediction -> precision 1 only if there was
    nothing to find, else 0 (and the same for recall); both empty -> all 1.
    """

    predicted: int
    truth: int
    matched: int

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else float(self.truth == 0)

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else float(self.predicted == 0)

    @property
    def f1(self) -> float:
        total = self.predicted + self.truth
        return 2.0 * self.matched / total if total else 1.0


def match_objects(
    pred_labels: np.ndarray, n_pred: int, truth_labels: np.ndarray, n_truth: int, min_iou: float = MATCH_IOU
) -> int:
    """Number of one-to-one matches at IoU >= ``min_iou`` between two label images.

    Overlapping pairs are counted from the pixels labelled in both; pairs over the
    threshold are taken greedily by decreasing IoU (above 0.5 a pair is the only one
    of either object, so greedy is optimal; at exactly 0.5 ties are broken by IoU order).
    """
    if pred_labels.shape != truth_labels.shape:
        raise ValueError(f"label images differ in shape: {pred_labels.shape} vs {truth_labels.shape}")
    if n_pred == 0 or n_truth == 0:
        return 0
    both = (pred_labels > 0) & (truth_labels > 0)
    p = pred_labels[both].astype(np.int64)
    t = truth_labels[both].astype(np.int64)
    del both
    if p.size == 0:
        return 0
    keys, inter = np.unique(p * (n_truth + 1) + t, return_counts=True)
    pi, ti = np.divmod(keys, n_truth + 1)
    area_p = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    area_t = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
    iou = inter / (area_p[pi] + area_t[ti] - inter)
    ok = np.flatnonzero(iou >= min_iou)
    used_p: set[int] = set()
    used_t: set[int] = set()
    for k in ok[np.argsort(-iou[ok], kind="stable")]:
        a, b = int(pi[k]), int(ti[k])
        if a not in used_p and b not in used_t:
            used_p.add(a)
            used_t.add(b)
    return len(used_p)


def object_scores(
    pred: Any,
    truth: Any,
    slide_shape: tuple[int, int],
    factor: int = OBJECT_DOWNSAMPLE,
    min_iou: float = MATCH_IOU,
) -> ObjectScores:
    """Object-level matches of two RLEs (strings or run arrays) of a ``slide_shape`` slide.

    Both are sampled at 1/``factor`` (:func:`pipeline.rle.decode_downsampled`, default
    1/4: glomeruli stay tens of px across; two objects closer than ``factor`` px may
    merge) and their 8-connected components matched at IoU >= ``min_iou``, one-to-one.
    Memory: two bool masks and two int32 label images at 1/factor^2 of the slide.
    """
    from pipeline.rle import decode_downsampled

    truth_labels, n_truth = label_objects(decode_downsampled(truth, slide_shape, factor))
    pred_labels, n_pred = label_objects(decode_downsampled(pred, slide_shape, factor))
    matched = match_objects(pred_labels, n_pred, truth_labels, n_truth, min_iou)
    return ObjectScores(predicted=n_pred, truth=n_truth, matched=matched)


__all__ = [
    "MATCH_IOU",
    "OBJECT_COLUMNS",
    "OBJECT_DOWNSAMPLE",
    "SUMMARY_COLUMNS",
    "ObjectScores",
    "SlideObject",
    "crofton_perimeter",
    "label_objects",
    "match_objects",
    "mean_probabilities",
    "measure_objects",
    "object_scores",
    "summarise",
    "tissue_area_px",
    "write_object_results",
    "write_objects_csv",
]
