"""Which images of a TIFF form the slide: level 0 and the pyramid levels under it.

Pure size logic shared by both backends (see "Which image is the slide" in
:mod:`pipeline.slides`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.progress import get_logger

# the package's name, as before the split into modules, so log lines stay the same
log = get_logger(__name__)

_ASSOCIATED = ("thumbnail", "label", "macro", "overview")


def _is_downsample(big: tuple[int, int], small: tuple[int, int]) -> bool:
    """Whether ``small`` is ``big`` reduced by one factor in both axes (floor or ceil sizes).

    Rejects the SVS label and macro images that GDAL reports as overviews, and unrelated
    images of another aspect ratio.
    """
    (H, W), (h, w) = big, small
    if h < 1 or w < 1 or h > H or w > W or (h, w) == (H, W):
        return False
    lo = max(H / (h + 1), W / (w + 1))
    hi = min(H / (h - 1) if h > 1 else math.inf, W / (w - 1) if w > 1 else math.inf)
    return lo < hi


def _choose_images(
    sizes: Sequence[tuple[int, int, int]], prefer_largest: bool
) -> tuple[list[int], list[list[int]]]:
    """Decide which images form the slide; raise ValueError(problem) when it is ambiguous.

    ``sizes`` holds ``(height, width, channels)`` per candidate image. Returns the indices
    of level 0 (one image, or three single-channel pages = R, G, B) and groups of indices
    of further pyramid levels (same grouping, largest first).
    """
    if not sizes:
        raise ValueError("no image in the file")
    if len(sizes) == 1:
        return [0], []
    if prefer_largest:
        best = max(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], -i))
        return [best], []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w, _c) in enumerate(sizes):
        groups.setdefault((h, w), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1])
    (H, W), main = ordered[0]
    if len(main) == 3 and all(sizes[i][2] == 1 for i in main):
        pass  # one page per channel
    elif len(main) != 1:
        raise ValueError(
            f"{len(main)} images of the same size {H}x{W}: cannot tell which is the slide "
            "(expected one image, or three single-channel pages = R, G, B)"
        )
    levels = []
    for (h, w), idx in ordered[1:]:
        if not _is_downsample((H, W), (h, w)) or len(idx) != len(main):
            raise ValueError(
                f"images of different sizes {H}x{W} and {h}x{w} that do not form a pyramid: "
                "cannot tell which is the slide"
            )
        levels.append(idx)
    return main, levels


def _pyramid(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of ``shapes`` that form a strictly decreasing pyramid under shapes[0]."""
    keep = [0]
    order = sorted(range(1, len(shapes)), key=lambda i: -shapes[i][0] * shapes[i][1])
    for i in order:
        prev = shapes[keep[-1]]
        if (
            _is_downsample(shapes[0], shapes[i])
            and shapes[i][0] <= prev[0]
            and shapes[i][1] <= prev[1]
            and shapes[i] != prev
        ):
            keep.append(i)
        else:
            log.debug("ignoring image of size %s: not a pyramid level of %s", shapes[i], shapes[0])
    return keep
