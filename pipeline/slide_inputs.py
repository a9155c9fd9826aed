"""What a model needs from a slide besides its pixels, decided once per slide.

A checkpoint carries the colour normalisation (:mod:`pipeline.stain`) and the input
normalisation (:mod:`pipeline.input_norm`) it was trained with. Both take their
statistics from the slide's own tissue-stage thumbnail, never from a window, so every
window of one slide is mapped alike, as every tile of it was in training. Prediction
and the out-of-fold stage build their window map here; ensemble members must agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ConfigError, DataError
from pipeline.input_norm import InputNorm, check_combination, intensity_stats
from pipeline.progress import get_logger
from pipeline.stain import NONE, ColourNormaliser, tissue_stats

if TYPE_CHECKING:
    from pipeline.tissue import TissueMask

log = get_logger(__name__)


def _require_thumbnail(tissue: TissueMask | None, source: Any, what: str) -> None:
    """DataError unless the slide's tissue-stage thumbnail is there: per-slide statistics come from it."""
    if tissue is None or tissue.thumbnail_from_mask:
        missing = "no tissue mask was given (--tissue)" if tissue is None else \
            "the tissue mask has no thumbnail beside it ({id}.thumb.png, written by the tissue stage)"
        raise DataError(source, f"the model normalises {what} with the slide's tissue statistics, but {missing}")


def ensemble_colour(metas: Sequence[dict[str, Any]], checkpoints: Sequence[str | os.PathLike[str]]) -> ColourNormaliser:
    """The colour normalisation the checkpoints were trained with; members must agree (one map per slide)."""
    colours = [ColourNormaliser.from_dict(m.get("colour")) for m in metas]
    for colour, path in zip(colours[1:], checkpoints[1:], strict=True):
        if colour != colours[0]:
            raise ConfigError(path, f"ensemble members disagree on colour normalisation: {colours[0].as_dict()} "
                                    f"vs {colour.as_dict()} (train them with the same slides.normalise and slides)")
    return colours[0] if colours else NONE


def slide_normaliser(
    colour: ColourNormaliser, tissue: TissueMask | None, source: Any = None
) -> tuple[Callable[[np.ndarray], np.ndarray] | None, dict[str, Any]]:
    """(window map or None, attrs to record) for one slide: its tissue's colour statistics onto the reference."""
    if not colour.active:
        return None, {}
    _require_thumbnail(tissue, source, f"colour ({colour.method})")
    stats = tissue_stats(tissue.thumbnail, tissue.mask)
    log.info("%s: colour normalisation %s, slide LAB mean %s -> reference %s", source or "slide", colour.method,
             [round(v, 1) for v in stats.mean], [round(v, 1) for v in colour.reference.mean])
    return (lambda images: colour.apply(images, stats)), {"colour": {**colour.as_dict(), "slide": stats.as_dict()}}


def ensemble_input_norm(metas: Sequence[dict[str, Any]], checkpoints: Sequence[str | os.PathLike[str]]) -> InputNorm:
    """The input normalisation the checkpoints were trained with (``none`` when absent); members must agree."""
    norms = [InputNorm.from_meta(m) for m in metas]
    for norm, path in zip(norms[1:], checkpoints[1:], strict=True):
        if norm != norms[0]:
            raise ConfigError(path, f"ensemble members disagree on input normalisation: {norms[0].as_dict()} vs "
                                    f"{norm.as_dict()} (train them with the same model.input_norm)")
    return norms[0] if norms else InputNorm()


def slide_input_norm(
    input_norm: InputNorm, tissue: TissueMask | None, source: Any, mean: Sequence[float], std: Sequence[float]
) -> tuple[Callable[[np.ndarray], np.ndarray] | None, list[float], list[float], dict[str, Any]]:
    """(window map or None, mean, std, attrs) of one slide: decided once from its tissue thumbnail.

    Every window of the slide gets the same map (``invert_dark``: all inverted or none) and
    the same per-channel ``mean``/``std`` (``per_image``: the slide's tissue statistics in
    place of the model's), as every tile of it did in training (:mod:`pipeline.input_norm`).
    """
    if not input_norm.active:
        return None, list(mean), list(std), {}
    _require_thumbnail(tissue, source, f"its input ({input_norm.method})")
    stats = intensity_stats(tissue.thumbnail, tissue.mask)
    pixel_map = input_norm.pixel_map(stats)
    m, s = input_norm.tensor_stats(stats, mean, std)
    log.info("%s: input normalisation %s, slide mean intensity %.1f%s", source or "slide", input_norm.method,
             stats.mean_intensity, " -> inverted" if pixel_map is not None else "")
    attrs = {"input_norm": {**input_norm.as_dict(), "slide": stats.as_dict(), "inverted": pixel_map is not None,
                            "mean": m, "std": s}}
    return pixel_map, m, s, attrs


def _then(first: Callable[[np.ndarray], np.ndarray] | None,
          second: Callable[[np.ndarray], np.ndarray] | None) -> Callable[[np.ndarray], np.ndarray] | None:
    if first is None or second is None:
        return first or second
    return lambda images: second(first(images))


def slide_inputs(
    metas: Sequence[dict[str, Any]], checkpoints: Sequence[str | os.PathLike[str]], tissue: TissueMask | None,
    source: Any, mean: Sequence[float], std: Sequence[float],
) -> tuple[Callable[[np.ndarray], np.ndarray] | None, list[float], list[float], dict[str, Any]]:
    """(window map, mean, std, attrs) an ensemble needs for one slide: colour, then input normalisation."""
    colour, input_norm = ensemble_colour(metas, checkpoints), ensemble_input_norm(metas, checkpoints)
    try:
        check_combination(colour.method, input_norm.method)
    except ConfigError as err:
        raise ConfigError(checkpoints[0], err.problem) from None
    normalise, attrs = slide_normaliser(colour, tissue, source)
    pixel_map, mean, std, input_attrs = slide_input_norm(input_norm, tissue, source, mean, std)
    return _then(normalise, pixel_map), mean, std, {**attrs, **input_attrs}


__all__ = ["ensemble_colour", "ensemble_input_norm", "slide_input_norm", "slide_inputs", "slide_normaliser"]
