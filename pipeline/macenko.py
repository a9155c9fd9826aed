"""Macenko stain normalisation, per slide: stain vectors from the slide's tissue thumbnail.

Reinhard (:mod:`pipeline.stain`) matches colour statistics; Macenko et al. (ISBI 2009) model
the physics instead. In optical density (OD = -ln(I / background)) a stained pixel is a
non-negative mix of two stain vectors (haematoxylin, and eosin or PAS-magenta), so a slide is
described by those two unit vectors, by how much of each stain it carries (the 99th percentile
of each concentration) and by the colour of its glass. Mapping a slide onto a reference swaps
its vectors for the reference's, rescales the concentrations and renders on the reference
glass: a linear map in OD space, one 3x3 matrix per slide.

Why written here: ``torchstain``/``staintools`` fit the vectors on each image they normalise
(per window here, so windows of one slide would differ) and assume white glass; a camera's
tinted background is exactly what a per-slide glass estimate fixes. The algorithm is ~60
lines of NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.tissue import MIN_PIXELS, tissue_rows

OD_MIN = 0.15  # Macenko's beta: pixels with a smaller OD in any channel are (nearly) transparent
ANGLE_PERCENTILE = 1.0  # Macenko's alpha: robust extremes of the stain angles
CONC_PERCENTILE = 99.0
DARK = 40  # glass estimate ignores pixels whose brightest channel is below this (black slide padding)
#: Macenko's reference H&E vectors (rows, unit OD), for a slide with too little stain to fit its own.
DEFAULT_STAINS = ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581))

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class StainStats:
    """A slide's two unit stain vectors (OD, haematoxylin-like first), their 99th-percentile
    concentrations, and its glass colour (RGB, 0..255)."""

    stains: tuple[Vector3, Vector3]
    max_conc: tuple[float, float]
    background: Vector3

    def as_dict(self) -> dict[str, Any]:
        return {"stains": [[float(v) for v in s] for s in self.stains],
                "max_conc": [float(v) for v in self.max_conc],
                "background": [float(v) for v in self.background]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StainStats:
        stains = tuple(tuple(float(v) for v in s) for s in d["stains"])
        max_conc, background = tuple(float(v) for v in d["max_conc"]), tuple(float(v) for v in d["background"])
        if len(stains) != 2 or any(len(s) != 3 for s in stains) or len(max_conc) != 2 or len(background) != 3:
            raise ValueError(f"stain statistics need 2 stain vectors of 3, 2 concentrations and 3 glass values, got {d}")
        return cls(stains, max_conc, background)  # type: ignore[arg-type]


def glass_colour(thumbnail: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
    """Per-channel glass colour: the median outside the tissue (dark padding left out).

    A slide (or patch) that is all tissue has no glass to measure: the per-channel 99th
    percentile of the whole image stands in (its brightest, least stained pixels).
    """
    pixels = thumbnail.reshape(-1, 3).astype(np.float64)
    glass = pixels.max(axis=1) >= DARK
    if tissue is not None:
        glass &= ~np.asarray(tissue, bool).reshape(-1)
    if int(glass.sum()) >= MIN_PIXELS:
        return np.median(pixels[glass], axis=0)
    return np.percentile(pixels, 99, axis=0)


def optical_density(images: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 OD (..., 3) against ``background``; glass is 0, never negative."""
    levels = np.arange(256, dtype=np.float64)[:, None]
    lut = np.maximum(-np.log((levels + 1.0) / (np.asarray(background, np.float64) + 1.0)), 0.0).astype(np.float32)
    return np.stack([lut[images[..., c], c] for c in range(3)], axis=-1)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def fit_stains(od: np.ndarray) -> np.ndarray:
    """The two stain vectors (2 x 3, unit rows, haematoxylin-like first) of OD pixels (N x 3).

    Macenko: the plane of the two largest eigenvectors of the OD covariance holds the stains;
    the robust extremes of the pixels' angles in that plane are the two pure stains.
    """
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vecs[:, [2, 1]]
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # stains absorb: point the axes into positive OD
    proj = od @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v1, v2 = (plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi))
    stains = np.stack([v1, v2] if v1[0] >= v2[0] else [v2, v1])  # haematoxylin absorbs red most
    return _unit_rows(np.abs(stains))


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations (N x 2) of OD pixels (N x 3)."""
    return od @ np.linalg.pinv(stains)


def stain_stats(thumbnail: np.ndarray, tissue: np.ndarray | None = None) -> StainStats:
    """Macenko statistics of a slide from its low-res ``thumbnail`` and ``tissue`` mask.

    Too few stained pixels (a blank slide) to fit vectors: Macenko's reference vectors are
    used, so the map stays defined.
    """
    background = glass_colour(thumbnail, tissue)
    od = tissue_rows(optical_density(thumbnail, background).reshape(-1, 3).astype(np.float64), tissue,
                     thumbnail.shape[:2])
    od = od[(od >= OD_MIN).all(axis=1)]
    stains = fit_stains(od) if od.shape[0] >= MIN_PIXELS else np.asarray(DEFAULT_STAINS)
    conc = concentrations(od, stains) if od.shape[0] else np.ones((1, 2))
    max_conc = np.maximum(np.percentile(conc, CONC_PERCENTILE, axis=0), 1e-3)
    return StainStats(tuple(tuple(s) for s in stains.tolist()), tuple(max_conc.tolist()),  # type: ignore[arg-type]
                      tuple(background.tolist()))  # type: ignore[arg-type]


def reference_stains(per_slide: Sequence[StainStats]) -> StainStats:
    """The reference of a training set: mean stain vectors (renormalised), concentrations and glass."""
    if not per_slide:
        raise ValueError("reference_stains: no slide statistics")
    stains = _unit_rows(np.mean([s.stains for s in per_slide], axis=0))
    max_conc = np.mean([s.max_conc for s in per_slide], axis=0)
    background = np.mean([s.background for s in per_slide], axis=0)
    return StainStats(tuple(tuple(s) for s in stains.tolist()), tuple(max_conc.tolist()),  # type: ignore[arg-type]
                      tuple(background.tolist()))  # type: ignore[arg-type]


def od_map(source: StainStats, target: StainStats) -> np.ndarray:
    """The 3x3 matrix taking a source pixel's OD (row vector) to the target's: unmix, rescale, remix."""
    scale = np.asarray(target.max_conc) / np.asarray(source.max_conc)
    return np.linalg.pinv(np.asarray(source.stains)) @ np.diag(scale) @ np.asarray(target.stains)


def macenko(images: np.ndarray, source: StainStats, target: StainStats) -> np.ndarray:
    """uint8 RGB images (..., 3) of a slide with ``source`` stains rendered with ``target``'s."""
    od = optical_density(images, source.background)
    out = od.reshape(-1, 3) @ od_map(source, target).astype(np.float32)
    glass = np.asarray(target.background, np.float32) + 1.0
    rgb = glass * np.exp(-np.maximum(out, 0.0)) - 1.0
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(images.shape)


__all__ = ["StainStats", "concentrations", "fit_stains", "glass_colour", "macenko", "od_map", "optical_density",
           "reference_stains", "stain_stats"]
