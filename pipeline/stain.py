"""Colour normalisation for slides from other scanners, cameras and labs (Reinhard or Macenko, per slide).

A model trained on one lab's slides sees another lab's camera as a new world: a darker,
bluer slide can drop every probability below the threshold although its glomeruli are
obvious to the eye. Reinhard's transfer (match the mean and standard deviation of each
CIELAB channel to a reference) removes most of that shift with an affine map per channel.

Two decisions, and why:

* **Statistics per slide, from its tissue at low resolution** (the tissue stage's thumbnail
  and mask), never per window: all windows of one slide get the same map, so a window of
  pale cortex is not stretched into something it is not, and the statistics cost nothing.
* **The reference is fitted once on the training slides** (the mean of their statistics)
  and stored in every checkpoint, so a new slide needs only its own tissue thumbnail.

Written here rather than taken from ``torchstain``/``staintools``: those fit a target on one
image and normalise one image at a time from that image's own statistics (per window here),
and would add a dependency for about 40 lines of NumPy/OpenCV. ``macenko`` (stain vectors
and the slide's glass colour, :mod:`pipeline.macenko`) follows the same two decisions; the
per-slide statistics hold both, so a tile store serves either method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.errors import ConfigError
from pipeline.macenko import StainStats, macenko, reference_stains, stain_stats
from pipeline.tissue import tissue_rows

METHODS = ("none", "reinhard", "macenko")
STD_FLOOR = 1e-3  # a flat channel (blank slide) must not blow up the division


@dataclass(frozen=True)
class ColourStats:
    """Per-channel mean and standard deviation in CIELAB (L 0..100, a/b about -128..127), and the
    slide's Macenko stain statistics (``None`` in statistics recorded before they existed)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stain: StainStats | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}
        if self.stain is not None:
            out["stain"] = self.stain.as_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColourStats:
        mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"colour statistics need 3 means and 3 stds, got {d}")
        stain = StainStats.from_dict(d["stain"]) if d.get("stain") else None
        return cls(mean, std, stain)  # type: ignore[arg-type]


def check_method(method: str) -> str:
    """``method`` if it is a known normalisation, else a ConfigError naming the choices."""
    if method not in METHODS:
        raise ConfigError(None, f"slides.normalise must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def to_lab(rgb_uint8: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 CIELAB (..., 3); OpenCV's float path keeps full precision."""
    rgb = np.ascontiguousarray(rgb_uint8, dtype=np.float32) / 255.0
    flat = rgb.reshape(-1, 1, 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(rgb.shape)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB (..., 3) -> uint8 RGB (..., 3), clipped."""
    flat = np.ascontiguousarray(lab, dtype=np.float32).reshape(-1, 1, 3)
    rgb = cv2.cvtColor(flat, cv2.COLOR_LAB2RGB).reshape(lab.shape)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def tissue_stats(thumbnail: np.ndarray, mask: np.ndarray | None = None) -> ColourStats:
    """Colour statistics of a slide's tissue (``mask`` True) in its low-res ``thumbnail``.

    With fewer than :data:`pipeline.tissue.MIN_PIXELS` tissue pixels (a blank slide) the whole thumbnail
    is used, so the map stays defined; the tissue stage has already warned about it.
    """
    lab = tissue_rows(to_lab(thumbnail).reshape(-1, 3).astype(np.float64), mask, thumbnail.shape[:2])
    if lab.shape[0] == 0:
        return ColourStats((100.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean, std = lab.mean(axis=0), np.maximum(lab.std(axis=0), STD_FLOOR)
    return ColourStats(tuple(mean.tolist()), tuple(std.tolist()), stain_stats(thumbnail, mask))  # type: ignore[arg-type]


def reference_stats(per_slide: Sequence[ColourStats]) -> ColourStats:
    """The reference of a training set: mean of the slides' means and of their stds (each slide counts once).

    Stain statistics join only when every slide has them (stores written before Macenko do not).
    """
    if not per_slide:
        raise ValueError("reference_stats: no slide statistics")
    mean = np.mean([s.mean for s in per_slide], axis=0)
    std = np.mean([s.std for s in per_slide], axis=0)
    stains = [s.stain for s in per_slide if s.stain is not None]
    reference = reference_stains(stains) if len(stains) == len(per_slide) else None
    return ColourStats(tuple(mean.tolist()), tuple(std.tolist()), reference)  # type: ignore[arg-type]


def reinhard(images: np.ndarray, source: ColourStats, target: ColourStats) -> np.ndarray:
    """uint8 RGB images (..., 3) of a slide with ``source`` statistics mapped onto ``target``."""
    lab = to_lab(images)
    ms, ss = np.asarray(source.mean, np.float32), np.asarray(source.std, np.float32)
    mt, st = np.asarray(target.mean, np.float32), np.asarray(target.std, np.float32)
    return from_lab((lab - ms) * (st / ss) + mt)


@dataclass(frozen=True)
class ColourNormaliser:
    """The normalisation a model was trained with: method + reference (stored in its checkpoint)."""

    method: str
    reference: ColourStats | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.method != "none" and self.reference is None:
            raise ValueError(f"colour normalisation {self.method!r} needs a reference")
        if self.method == "macenko" and self.reference is not None and self.reference.stain is None:
            raise ValueError("colour normalisation 'macenko' needs a reference with stain statistics")

    @property
    def active(self) -> bool:
        return self.method != "none"

    def apply(self, images: np.ndarray, slide: ColourStats | None) -> np.ndarray:
        """``images`` (uint8, (..., 3)) of one slide normalised with that slide's statistics."""
        if not self.active:
            return images
        if slide is None:
            raise ValueError("colour normalisation needs the slide's colour statistics")
        assert self.reference is not None
        if self.method == "reinhard":
            return reinhard(images, slide, self.reference)
        if slide.stain is None:
            raise ValueError("macenko normalisation needs the slide's stain statistics")
        assert self.reference.stain is not None  # __post_init__ refuses a Macenko reference without them
        return macenko(images, slide.stain, self.reference.stain)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.reference is not None:
            out["reference"] = self.reference.as_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ColourNormaliser:
        """From a checkpoint's ``colour`` entry; checkpoints without one were trained unnormalised."""
        if not d:
            return cls("none")
        ref = d.get("reference")
        return cls(str(d.get("method", "none")), ColourStats.from_dict(ref) if ref else None)


NONE = ColourNormaliser("none")

__all__ = [
    "METHODS",
    "NONE",
    "ColourNormaliser",
    "ColourStats",
    "check_method",
    "from_lab",
    "reference_stats",
    "reinhard",
    "tissue_stats",
    "to_lab",
]
