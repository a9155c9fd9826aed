"""How raw samples become uint8 RGB: validate the sample format, fix the per-slide scale.

See "Sample formats -> uint8" in :mod:`pipeline.slides`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import SlideError

@dataclass(frozen=True)
class _Pixels:
    """How raw samples become uint8 RGB: channels kept, scale, inversion."""

    dtype: np.dtype
    channels: int
    maxval: float  # raw value that maps to 255
    invert: bool

    def to_rgb8(self, raw: np.ndarray) -> np.ndarray:
        """(h, w[, c]) raw samples -> (h, w, 3) uint8 RGB."""
        if raw.ndim == 2:
            raw = raw[..., None]
        x = raw[..., :3] if self.channels >= 3 else raw[..., :1]
        if x.dtype == np.uint8 and self.maxval == 255:
            out = x
        elif x.dtype == np.bool_:
            out = x.astype(np.uint8) * np.uint8(255)
        elif x.dtype.kind == "f":
            y = np.nan_to_num(x.astype(np.float32, copy=False), nan=0.0)
            out = np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            y = x.astype(np.float32) * np.float32(255.0 / self.maxval) + np.float32(0.5)
            out = np.minimum(y, 255).astype(np.uint8)
        if self.invert:
            out = 255 - out
        if out.shape[-1] == 1:
            out = np.repeat(out, 3, axis=-1)
        return np.ascontiguousarray(out)


def _make_pixels(
    path: Path,
    dtype: Any,
    channels: int,
    invert: bool,
    bits: int | None,
    probe: Callable[[], np.ndarray],
) -> _Pixels:
    """Validate the sample format and fix the per-slide scale to uint8 (see package doc)."""
    dtype = np.dtype(dtype)
    if channels not in (1, 2, 3, 4):
        raise SlideError(
            path,
            f"unsupported image with {channels} channels per pixel "
            "(expected 1 grey, 2 grey+alpha, 3 RGB or 4 RGBA)",
        )
    kind = dtype.kind
    if kind == "b":
        return _Pixels(dtype, channels, 1.0, invert)
    if kind == "u":
        nbits = dtype.itemsize * 8
        if bits is not None and 0 < bits < nbits:
            maxval = 2**bits - 1
        elif dtype == np.uint8:
            maxval = 255
        else:
            sample = probe()
            top = int(sample[..., : min(channels, 3)].max()) if sample.size else 0
            maxval = 2 ** max(8, top.bit_length()) - 1
        return _Pixels(dtype, channels, float(maxval), invert)
    if kind == "f":
        sample = probe()[..., : min(channels, 3)]
        finite = sample[np.isfinite(sample)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise SlideError(
                path,
                f"unsupported floating-point samples in [{lo:g}, {hi:g}] "
                "(only [0, 1] is supported, scaled by 255)",
            )
        return _Pixels(dtype, channels, 1.0, invert)
    if kind == "i":
        raise SlideError(path, f"unsupported sample format: signed integers ({dtype})")
    raise SlideError(path, f"unsupported sample format: {dtype}")
