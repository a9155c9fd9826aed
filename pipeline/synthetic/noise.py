"""Hash-based noise: integer hashes, value / fractal noise and per-pixel grain.

Every field is a function of full-res coordinates and a per-slide salt, so any window of a
slide sees the same values whatever the tiling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_GOLD = np.uint32(0x9E3779B9)


def _mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash (uint32 -> uint32, wraps)."""
    x = x ^ (x >> np.uint32(16))
    x = x * _M1
    x = x ^ (x >> np.uint32(15))
    x = x * _M2
    return x ^ (x >> np.uint32(16))


def _u32(a: Any) -> np.ndarray:
    return (np.asarray(a, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)


def _salt(seed: int, name: str) -> np.uint32:
    """A per-slide, per-purpose 32-bit salt."""
    h = 2166136261
    for ch in f"{seed}:{name}".encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return np.uint32(h)


def _hash2(i: Any, j: Any, salt: np.uint32) -> np.ndarray:
    """Hash of integer lattice points (broadcasting), uint32."""
    with np.errstate(over="ignore"):
        h = _mix(np.atleast_1d(_u32(i)) ^ salt)
        return _mix(h ^ (np.atleast_1d(_u32(j)) * _GOLD))


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> float32 in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _lerp_index(
    coords: np.ndarray, cell: float, smooth: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice nodes around ``coords`` (spacing ``cell``), each coordinate's node and weight."""
    f = coords / cell
    i0 = np.floor(f).astype(np.int64)
    lo = int(i0.min())
    nodes = np.arange(lo, int(i0.max()) + 2, dtype=np.int64)
    t = (f - i0).astype(np.float32)
    w = t * t * (np.float32(3.0) - np.float32(2.0) * t) if smooth else t
    return nodes, i0 - lo, w


def _interp2(
    lattice: np.ndarray, iy: np.ndarray, wy: np.ndarray, ix: np.ndarray, wx: np.ndarray
) -> np.ndarray:
    """Separable interpolation of a small lattice onto an (len(iy), len(ix)) grid.

    Interpolates along x on the lattice rows, then gathers whole rows: a few passes
    over the output and no BLAS (whose threads spin for nothing on matrices this thin).
    """
    band = lattice[:, ix] * (np.float32(1.0) - wx) + lattice[:, ix + 1] * wx  # (gy, w)
    top = np.take(band, iy, axis=0)
    out = np.take(band, iy + 1, axis=0)
    out -= top
    out *= wy[:, None]
    out += top
    return out


def value_noise(ys: np.ndarray, xs: np.ndarray, cell: float, salt: np.uint32) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid ``ys x xs`` (full-res coordinates).

    Lattice values come from a hash of the node, so any window of the slide sees the
    same field whatever the tiling; interpolation is separable (smoothstep weights).
    """
    ny, iy, wy = _lerp_index(ys, cell)
    nx, ix, wx = _lerp_index(xs, cell)
    lattice = _unit(_hash2(ny[:, None], nx[None, :], salt)) * np.float32(2.0) - np.float32(1.0)
    return _interp2(lattice, iy, wy, ix, wx)


def fractal_noise(ys: np.ndarray, xs: np.ndarray, cell: float, octaves: int, salt: np.uint32) -> np.ndarray:
    """Sum of value-noise octaves (cell, cell/2, ...), amplitudes 1, 1/2, ... normalised to ~[-1, 1]."""
    out = np.zeros((ys.size, xs.size), dtype=np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        octave_salt = np.uint32((int(salt) + 7919 * k) & 0xFFFFFFFF)
        out += np.float32(amp) * value_noise(ys, xs, cell / 2**k, octave_salt)
        total += amp
        amp *= 0.5
    out /= np.float32(total)
    return out


GRAIN_PERIOD = 1024


def _grain(seed: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Per-pixel grain in [-0.5, 0.5): a periodic 1024 px texture, so a window is a slice."""
    tex = _GRAIN.get(seed)
    if tex is None:
        p = np.arange(GRAIN_PERIOD)
        tex = _unit(_hash2(p[:, None], p[None, :], _salt(seed, "grain"))) - np.float32(0.5)
        if len(_GRAIN) > 8:
            _GRAIN.clear()
        _GRAIN[seed] = tex
    ry, rx = y0 % GRAIN_PERIOD, x0 % GRAIN_PERIOD
    if ry + height <= GRAIN_PERIOD and rx + width <= GRAIN_PERIOD:
        return tex[ry : ry + height, rx : rx + width]
    rows = (y0 + np.arange(height)) % GRAIN_PERIOD
    cols = (x0 + np.arange(width)) % GRAIN_PERIOD
    return np.take(np.take(tex, rows, axis=0), cols, axis=1)


_GRAIN: dict[int, np.ndarray] = {}


def _point_noise(y: np.ndarray, x: np.ndarray, cell: float, salt: np.uint32) -> np.ndarray:
    """``value_noise`` at scattered points (same field), for checks on outlines."""
    fy, fx = np.asarray(y, np.float64) / cell, np.asarray(x, np.float64) / cell
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - iy, fx - ix
    sy, sx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)

    def node(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _unit(_hash2(a, b, salt)).astype(np.float64) * 2.0 - 1.0

    top = node(iy, ix) * (1 - sx) + node(iy, ix + 1) * sx
    bottom = node(iy + 1, ix) * (1 - sx) + node(iy + 1, ix + 1) * sx
    return top * (1 - sy) + bottom * sy
