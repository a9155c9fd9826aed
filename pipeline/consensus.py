"""Where windows go and how their predictions are blended: the window grid, the weight map,
and the band accumulator that turns weighted windows into a consensus map in bounded memory.

Each window's probabilities are multiplied by a weight map that falls off towards the window
border (a Gaussian as in nnU-Net / MONAI, computed once per window size) and added into
weighted-sum and weight-sum accumulators; the consensus is their ratio (0 where no window
counted). The accumulators hold one band of windows (one window height at model resolution x
the slide width); rows no later window can touch are flushed to the store as the grid moves
down, so memory is O(width / scale * out_size), never the slide.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from pipeline.config_checks import check_predict_scale
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import PredictConfig
    from pipeline.tissue import TissueMask

BLENDS = ("gaussian", "constant")
#: Floor of the Gaussian weight (MONAI clamps its importance map likewise): border
#: pixels covered by a single window keep that window's prediction.
MIN_WEIGHT = 1e-3


@functools.lru_cache(maxsize=8)
def _weight_cached(size: int, blend: str, sigma: float) -> np.ndarray:
    if blend == "constant":
        w = np.ones((size, size), np.float32)
    else:
        centre = (size - 1) / 2.0  # symmetric, so flips (TTA) see the same weights
        s = sigma * size
        if s <= 0:
            raise ConfigError(None, f"predict.sigma must be > 0, got {sigma}")
        g = np.exp(-0.5 * ((np.arange(size) - centre) / s) ** 2)
        w = np.outer(g, g)
        w = np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)
    w.setflags(write=False)
    return w


def gaussian_weight(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 Gaussian importance map, max 1, floored at ``MIN_WEIGHT``.

    ``sigma`` is a fraction of ``size`` (nnU-Net's ``sigma_scale``: 0.125 = 1/8).
    Cached: computed once per (size, sigma) and returned read-only.
    """
    return _weight_cached(int(size), "gaussian", float(sigma))


def weight_map(size: int, blend: str = "gaussian", sigma: float = 0.125) -> np.ndarray:
    """The blending weights of one window at model resolution: ``gaussian`` or ``constant``."""
    if blend not in BLENDS:
        raise ConfigError(None, f"predict.blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    return _weight_cached(int(size), blend, float(sigma))


def model_scale(cfg: PredictConfig) -> int:
    """Full-res pixels per model pixel (``window / out_size``); must be an integer."""
    return check_predict_scale(cfg)


def _axis_positions(n: int, size: int, stride: int, origin: int) -> list[int]:
    """Window starts along one axis, in units of the grid (model pixels).

    Starts fall every ``stride`` on the lattice through ``origin`` (the first one at
    or before 0, possibly negative = padded), and the last window is aligned to the
    far border so the whole axis is covered without extra padding.
    """
    if n <= size:
        return [0]  # one window, padded past the far border
    offset = origin % stride
    starts = list(range(offset - stride if offset else 0, n - size, stride))
    starts.append(n - size)
    return starts


def window_grid(
    slide_shape: tuple[int, int],
    window: int,
    overlap: float,
    tissue: TissueMask | None = None,
    *,
    scale: int = 1,
    origin: tuple[int, int] = (0, 0),
    min_tissue: float = 0.0,
) -> pd.DataFrame:
    """Windows (``y0, x0`` full-res, sorted row-major; ``tissue`` when known) covering the slide.

    The stride is ``window * (1 - overlap)`` rounded to a multiple of ``scale`` so
    every window starts on a model pixel; the last row/column is aligned to the
    border of the model-resolution map (``ceil(H / scale) * scale``), so at most
    ``scale - 1`` px of padding. ``origin`` (full-res px) shifts the lattice (e.g. by
    half a stride, for the seam test); windows reaching before 0 are padded. With a
    tissue mask, windows whose tissue fraction is not above ``min_tissue`` are dropped.
    """
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(None, f"predict.overlap must be in [0, 1), got {overlap}")
    if scale <= 0 or window % scale:
        raise ConfigError(None, f"window {window} is not a multiple of the model scale {scale}")
    height, width = slide_shape
    size = window // scale
    stride = max(1, int(round(size * (1.0 - overlap))))
    oy, ox = (int(round(o / scale)) for o in origin)
    ys = _axis_positions(math.ceil(height / scale), size, stride, oy)
    xs = _axis_positions(math.ceil(width / scale), size, stride, ox)
    y0, x0 = (a.ravel() * scale for a in np.meshgrid(np.asarray(ys, np.int64), np.asarray(xs, np.int64), indexing="ij"))
    grid = pd.DataFrame({"y0": y0.astype(np.int64), "x0": x0.astype(np.int64)})
    if tissue is not None:
        frac = tissue.window_fractions(y0, x0, window, window)  # padding counts as glass
        grid["tissue"] = frac
        grid = grid[frac > min_tissue].reset_index(drop=True)
    return grid


# ---------------------------------------------------------------- accumulation


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 ``values`` as ``dtype``; float16 through torch, whose vectorised conversion is
    ~4x NumPy's and rounds identically (round to nearest even)."""
    if np.dtype(dtype) == np.float16:
        return torch.from_numpy(np.ascontiguousarray(values)).half().numpy()
    return values.astype(dtype)


def _chunk_width(out: Any) -> int:
    """Columns per chunk of a Zarr array; the whole width for anything unchunked (NumPy)."""
    chunks = getattr(out, "chunks", None)
    return int(chunks[1]) if chunks else int(out.shape[1])


def touched_spans(columns: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """``(c0, c1)`` column ranges covering, in whole ``chunk``-wide steps, every True of ``columns``.

    Runs of touched chunks are merged, so each span is one store write.
    """
    width = columns.size
    chunk = max(1, int(chunk))
    n = -(-width // chunk)
    padded = np.zeros(n * chunk, bool)
    padded[:width] = columns
    touched = np.concatenate(([False], padded.reshape(n, chunk).any(axis=1), [False]))
    edges = np.flatnonzero(touched[1:] != touched[:-1])
    return [(int(a) * chunk, min(int(b) * chunk, width)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


class BandAccumulator:
    """Weighted-sum and weight-sum accumulators for one horizontal band of windows.

    ``out`` is the (H/scale, W/scale) store; the band holds ``band_height`` rows (one
    window at model resolution) starting at row ``top``. Windows must arrive in
    row-major grid order: :meth:`advance` to a window's row flushes every row above
    it (no later window can touch them) as ``sum / weight`` (0 where no weight).
    """

    def __init__(self, out: Any, band_height: int) -> None:
        self.out = out
        self.height, self.width = (int(n) for n in out.shape)
        self.band_height = int(band_height)
        self.sum = np.zeros((self.band_height, self.width), np.float32)
        self.weight = np.zeros((self.band_height, self.width), np.float32)
        self._scratch = np.empty((self.band_height, self.band_height), np.float32)  # one window's prob * weight
        self.top = 0
        self.rows_written = 0

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of each accumulator: (band_height, map width)."""
        return self.sum.shape

    def _flush(self, n: int) -> None:
        n = min(n, self.band_height, self.height - self.top)
        if n <= 0:
            return
        w = self.weight[:n]
        # only the column chunks some window touched are written; the rest keep the store's
        # fill value (0), so the store can skip zarr's "is this chunk all 0?" pass
        for c0, c1 in touched_spans(w.any(axis=0), _chunk_width(self.out)):
            wt = w[:, c0:c1]
            prob = np.zeros(wt.shape, np.float32)
            np.divide(self.sum[:n, c0:c1], wt, out=prob, where=wt > 0)
            self.out[self.top : self.top + n, c0:c1] = _to_dtype(prob, self.out.dtype)
        self.rows_written += n

    def advance(self, row: int) -> None:
        """Rows above ``row`` (model px) are final: write them and slide the band down."""
        d = row - self.top
        if d <= 0:
            return
        self._flush(d)
        if d >= self.band_height:
            self.sum.fill(0.0)
            self.weight.fill(0.0)
        else:
            keep = self.band_height - d
            self.sum[:keep] = self.sum[d:]
            self.weight[:keep] = self.weight[d:]
            self.sum[keep:] = 0.0
            self.weight[keep:] = 0.0
        self.top = row

    def add(self, row: int, col: int, prob: np.ndarray, weight: np.ndarray) -> None:
        """Add one window's ``prob * weight`` at model px (row, col); parts off the map are dropped."""
        if row > self.top:
            self.advance(row)
        h, w = prob.shape
        r0, r1 = max(row, 0), min(row + h, self.height)
        c0, c1 = max(col, 0), min(col + w, self.width)
        if r0 >= r1 or c0 >= c1:
            return
        if r1 - self.top > self.band_height or r0 < self.top:
            raise RuntimeError(f"window at row {row} outside the band [{self.top}, {self.top + self.band_height})")
        pr = slice(r0 - row, r1 - row)
        pc = slice(c0 - col, c1 - col)
        wt = weight[pr, pc]
        br = slice(r0 - self.top, r1 - self.top)
        weighted = np.multiply(prob[pr, pc], wt, out=self._scratch[: r1 - r0, : c1 - c0])
        self.sum[br, c0:c1] += weighted
        self.weight[br, c0:c1] += wt

    def finish(self) -> None:
        """Flush everything still in the band."""
        self.advance(self.height)


__all__ = [
    "BLENDS", "MIN_WEIGHT", "BandAccumulator", "gaussian_weight", "model_scale", "touched_spans", "weight_map",
    "window_grid",
]
