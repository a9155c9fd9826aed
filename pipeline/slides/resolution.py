"""The physical pixel size of a slide, from its TIFF resolution tags.

Areas in um^2 and densities per mm^2 need it; many slides (HuBMAP's among them) do
not say, so "unknown" (None) is an ordinary answer and callers fall back to pixels.
Read with tifffile whatever the slide backend: only the tags of the level-0 image
are parsed, no pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import SlideError
from pipeline.progress import get_logger

log = get_logger(__name__)

#: Micrometres per ResolutionUnit: 2 = inch, 3 = centimetre (1 = none: no physical size).
UM_PER_UNIT = {2: 25_400.0, 3: 10_000.0}
#: Coarser than this at level 0 is no slide scan (a 1.25x scan is ~8 um/px) but a writer's
#: placeholder such as 72 dpi (353 um/px): treated as unknown.
MAX_UM_PER_PX = 20.0
#: Top-level pages looked at to find the level-0 image (slides have a handful).
MAX_PAGES = 64


class PixelSize(NamedTuple):
    """Micrometres per full-resolution pixel along x (columns) and y (rows)."""

    x_um: float
    y_um: float

    @property
    def area_um2(self) -> float:
        """um^2 of one pixel."""
        return self.x_um * self.y_um


def _rational(value: object) -> float | None:
    """A TIFF RATIONAL tag value ((num, den) or a number) as a float; None if not positive."""
    try:
        if isinstance(value, tuple):
            num, den = value[:2]
            result = float(num) / float(den) if den else 0.0
        else:
            result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return result if result > 0 else None


def pixel_size_um(path: str | os.PathLike[str]) -> PixelSize | None:
    """um per pixel of the slide's level-0 image, or None when its TIFF tags do not say.

    Needs XResolution and YResolution (pixels per unit) and ResolutionUnit inch or
    centimetre (absent means inch, as in the TIFF standard; "none" means unknown). The
    level-0 image is the largest top-level page, as in :mod:`pipeline.slides`. A value
    coarser than :data:`MAX_UM_PER_PX` is a placeholder (72 dpi...): None, with a warning.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tf:
            best = None
            for i, page in enumerate(tf.pages):
                if i >= MAX_PAGES:
                    break
                size = int(getattr(page, "imagelength", 0)) * int(getattr(page, "imagewidth", 0))
                if best is None or size > best[0]:
                    best = (size, {k: page.tags.get(k) for k in ("XResolution", "YResolution", "ResolutionUnit")})
    except FileNotFoundError:
        raise SlideError(path, "slide not found") from None
    except (OSError, tifffile.TiffFileError) as err:
        raise SlideError(path, f"cannot read TIFF tags: {err}") from err
    if best is None:
        raise SlideError(path, "no image in the TIFF (cannot read its resolution tags)")
    tags = best[1]
    if tags["XResolution"] is None or tags["YResolution"] is None:
        return None
    unit = 2 if tags["ResolutionUnit"] is None else int(tags["ResolutionUnit"].value)
    if unit not in UM_PER_UNIT:
        return None
    xres, yres = _rational(tags["XResolution"].value), _rational(tags["YResolution"].value)
    if xres is None or yres is None:
        return None
    size = PixelSize(UM_PER_UNIT[unit] / xres, UM_PER_UNIT[unit] / yres)
    if max(size) > MAX_UM_PER_PX:
        log.warning(
            "%s: resolution tags say %.1f x %.1f um per pixel, too coarse for a slide scan "
            "(a writer's default?): physical sizes unknown", path, size.x_um, size.y_um,
        )
        return None
    return size


__all__ = ["PixelSize", "pixel_size_um"]
