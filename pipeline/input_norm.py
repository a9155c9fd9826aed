"""Per-image intensity normalisation of the model's input (``model.input_norm``).

From the nuclei U-Nets of the 2018 Data Science Bowl, whose images mixed bright-field
(dark stain on white) and fluorescence (bright nuclei on black):

* ``invert_dark``: an image whose mean intensity (all pixels, all channels, 0..255) is
  below ``model.invert_threshold`` has a dark background and is inverted (``255 - x``), so
  every image the model sees looks bright-field. The mean is taken over the image (the
  background dominates it), never over the tissue alone: tissue is darker than glass in
  bright-field, so a tissue-only mean would invert dense bright-field tissue.
* ``per_image``: every channel standardised to zero mean and unit standard deviation with
  the image's own statistics; ``model.mean``/``model.std`` are then not applied.

**Per slide, not per window.** A slide is one image: its prediction windows must not be
treated differently from one another (a window of mostly tissue is darker than one of
glass; a per-window rule would invert some windows of one slide and not others, or stretch
a window of pale cortex into something it is not, and the consensus map would show the
seams). So for slides every decision and statistic is taken once, from the slide's
tissue-stage thumbnail (where Reinhard's per-slide statistics come from,
:mod:`pipeline.stain`), and applied to every tile and window of it: the invert decision
from the mean of the whole thumbnail; the per_image statistics from the thumbnail's tissue
(inside the tissue mask, the whole thumbnail when it holds fewer than
:data:`pipeline.tissue.MIN_PIXELS` tissue pixels), because the model only ever sees windows
over tissue and a slide's share of glass must not change how its tissue is scaled. Tile
stores record these statistics (``input_stats`` in their attrs, :mod:`pipeline.tiles`), so
training, the first pass and prediction apply the same map to a slide. Images without a
slide (patches: :meth:`InputNorm.model_input` with no statistics, ``predict_batch(...,
input_norm=...)``) are each normalised with their own statistics, as in the Bowl.

**Why ``model.*`` and not beside ``slides.normalise``.** ``slides.normalise`` is the slide's
colour (stain, camera) mapped onto a reference fitted on the training slides;
``model.input_norm`` says how the network's input tensor is made from pixels, with (and, for
``per_image``, instead of) ``model.mean``/``model.std``: like them it belongs to the trained
model, is stored in every checkpoint (the ``input_norm`` entry, like ``colour``) and read back
at prediction, so prediction needs nothing else. Checkpoints without it count as ``none``.

**Not combined with** ``slides.normalise: reinhard``: both rescale a slide's intensities
from the same thumbnail, and their composition would need each one's statistics taken
after the other (per_image after Reinhard is also redundant: both match a slide's mean and
spread). Choose one; :func:`check_combination` refuses both.

Inverting is pointwise, so normalising the slide blocks once (:mod:`pipeline.reduced`) equals
normalising each window; windows reaching past the slide's border are padded with white
(255) before the map, like every other window.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config_checks import check_input_norm_combination as check_combination
from pipeline.errors import ConfigError
from pipeline.tissue import tissue_rows

if TYPE_CHECKING:
    import torch

    from pipeline.config import ModelConfig

METHODS = ("none", "invert_dark", "per_image")
DEFAULT_INVERT_THRESHOLD = 127.0
#: Floor of a channel's standard deviation (0..255): a flat channel (blank glass) must not blow up.
STD_FLOOR = 1.0


@dataclass(frozen=True)
class IntensityStats:
    """What input normalisation needs of one image (a slide's thumbnail, or a patch), 0..255 scale.

    ``mean_intensity``: mean over every pixel and channel (the invert decision);
    ``mean``/``std``: per channel over the tissue (a patch: every pixel), for per_image.
    """

    mean_intensity: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"mean_intensity": float(self.mean_intensity), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntensityStats:
        mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"intensity statistics need 3 means and 3 stds, got {d}")
        return cls(float(d["mean_intensity"]), mean, std)  # type: ignore[arg-type]


def intensity_stats(image: np.ndarray, mask: np.ndarray | None = None) -> IntensityStats:
    """Statistics of uint8 RGB ``image`` (..., 3); per-channel ones inside ``mask`` when it has enough pixels."""
    pixels = np.asarray(image).reshape(-1, 3).astype(np.float64)
    if pixels.shape[0] == 0:
        return IntensityStats(255.0, (255.0, 255.0, 255.0), (STD_FLOOR,) * 3)  # type: ignore[arg-type]
    chosen = tissue_rows(pixels, mask, np.shape(image)[:-1])
    mean, std = chosen.mean(axis=0), np.maximum(chosen.std(axis=0), STD_FLOOR)
    return IntensityStats(float(pixels.mean()), tuple(mean.tolist()), tuple(std.tolist()))  # type: ignore[arg-type]


def invert(images: np.ndarray) -> np.ndarray:
    """``255 - x`` of uint8 images (dark background -> bright-field look)."""
    return np.subtract(np.uint8(255), images, dtype=np.uint8)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(None, f"model.input_norm must be one of {', '.join(METHODS)}, got {method!r}")
    return method


@dataclass(frozen=True)
class InputNorm:
    """The input normalisation a model was trained with (stored in its checkpoint as ``input_norm``).

    ``invert_threshold`` is kept only for ``invert_dark`` (None otherwise), so two models
    that normalise alike compare equal.
    """

    method: str = "none"
    invert_threshold: float | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.method != "invert_dark":
            object.__setattr__(self, "invert_threshold", None)
            return
        t = DEFAULT_INVERT_THRESHOLD if self.invert_threshold is None else float(self.invert_threshold)
        if not 0.0 <= t <= 255.0:
            raise ConfigError(None, f"model.invert_threshold must be in 0..255 (a mean intensity), got {t}")
        object.__setattr__(self, "invert_threshold", t)

    @classmethod
    def from_config(cls, model: ModelConfig) -> InputNorm:
        return cls(model.input_norm, model.invert_threshold)

    @property
    def active(self) -> bool:
        return self.method != "none"

    def inverts(self, stats: IntensityStats) -> bool:
        """Whether an image (slide) with ``stats`` has a dark background and is inverted."""
        return self.method == "invert_dark" and stats.mean_intensity < float(self.invert_threshold or 0.0)

    def pixel_map(self, stats: IntensityStats) -> Callable[[np.ndarray], np.ndarray] | None:
        """The uint8 -> uint8 map of every tile/window of the image with ``stats`` (None: unchanged)."""
        return invert if self.inverts(stats) else None

    def tensor_stats(self, stats: IntensityStats | None, mean: Sequence[float],
                     std: Sequence[float]) -> tuple[list[float], list[float]]:
        """The per-channel (mean, std), 0..1 scale, that turn the uint8 input into the model's tensor.

        ``per_image``: the image's own (the slide's, for every window of it); otherwise the
        model's ``mean``/``std``.
        """
        if self.method != "per_image":
            return [float(v) for v in mean], [float(v) for v in std]
        if stats is None:
            raise ValueError("per_image input normalisation needs the image's (slide's) statistics")
        return [v / 255.0 for v in stats.mean], [v / 255.0 for v in stats.std]

    def model_input(
        self,
        images: np.ndarray,
        stats: IntensityStats | None,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """uint8 (N, H, W, 3) or (H, W, 3) -> the float32 (N, 3, H, W) tensor the model sees.

        ``stats``: the slide's (every image the same map); None: images without a slide
        (patches), each normalised with its own statistics.
        """
        import torch

        from pipeline.tensors import to_tensor

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if stats is None and self.active:
            return torch.cat([self.model_input(image, intensity_stats(image), mean, std, device) for image in images])
        pixel_map = self.pixel_map(stats) if stats is not None else None
        if pixel_map is not None:
            images = pixel_map(images)
        return to_tensor(images, *self.tensor_stats(stats, mean, std), device=device)

    def standardise(self, image: np.ndarray, stats: IntensityStats | None) -> np.ndarray:
        """One uint8 (H, W, 3) image as per_image's float32 (H, W, 3), by the very arithmetic of ``to_tensor``."""
        return self.model_input(image, stats, (0.0,) * 3, (1.0,) * 3)[0].permute(1, 2, 0).numpy()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.invert_threshold is not None:
            out["invert_threshold"] = float(self.invert_threshold)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> InputNorm:
        """From a checkpoint's ``input_norm`` entry; checkpoints without one were trained with ``none``."""
        if not d:
            return cls()
        return cls(str(d.get("method", "none")), d.get("invert_threshold"))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> InputNorm:
        """From a checkpoint: its ``input_norm`` entry, else its config's model section, else ``none``."""
        if meta.get("input_norm"):
            return cls.from_dict(meta["input_norm"])
        model = (meta.get("config") or {}).get("model") or {}
        return cls(str(model.get("input_norm", "none")), model.get("invert_threshold"))


NONE = InputNorm()

__all__ = [
    "DEFAULT_INVERT_THRESHOLD",
    "METHODS",
    "NONE",
    "InputNorm",
    "IntensityStats",
    "check_combination",
    "check_method",
    "intensity_stats",
    "invert",
]
