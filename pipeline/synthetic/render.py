"""Rendering: any window of a slide at any scale as uint8 RGB, from its plan alone (:func:`render_tile`)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.synthetic.noise import (
    _grain,
    _hash2,
    _interp2,
    _lerp_index,
    _mix,
    _salt,
    _unit,
    fractal_noise,
    value_noise,
)
from pipeline.synthetic.palette import (
    BOWMAN,
    CAPILLARY,
    CAPSULE,
    LUMEN,
    MEMBRANE,
    NUCLEUS,
    OD_LEVELS,
    OD_RANGE,
    STROMA,
    TUFT,
    TUFT_NUCLEUS,
    WALL,
)
from pipeline.synthetic.plan import TISSUE_EDGE_NOISE, Glomerulus, SlidePlan, TissueBlob

TUBULE_CELL = 50.0  # jittered grid spacing of tubules, px
TUBULE_RADIUS = (15.0, 38.0)  # semi-major axis, px

ALPHA_STEP = 8.0  # px between the points where the smooth tissue distance is evaluated


def _tissue_alpha(plan: SlidePlan, ys: np.ndarray, xs: np.ndarray) -> np.ndarray | float:
    """Tissue coverage of the window's pixels in [0, 1]; 0.0 / 1.0 scalars when uniform.

    The smooth outline's signed distance is evaluated on a coarse grid and interpolated
    (it is smooth at that scale); the ragged edge noise is added per pixel.
    """
    margin = TISSUE_EDGE_NOISE + 4.0
    near: list[TissueBlob] = []
    for b in plan.blobs:
        v = (np.array([ys[0], ys[-1]]) - b.cy) / b.sy
        u = (np.array([xs[0], xs[-1]]) - b.cx) / b.sx
        vmin = 0.0 if v[0] <= 0 <= v[1] else float(np.min(np.abs(v)))
        umin = 0.0 if u[0] <= 0 <= u[1] else float(np.min(np.abs(u)))
        rho_min = math.hypot(vmin, umin)
        rho_max = math.hypot(float(np.max(np.abs(v))), float(np.max(np.abs(u))))
        slack = margin / min(b.sy, b.sx)
        if rho_max < 1.0 - b.amplitude - slack:
            return 1.0
        if rho_min <= 1.0 + b.amplitude + slack:
            near.append(b)
    if not near:
        return 0.0
    step = max(ALPHA_STEP, float(ys[1] - ys[0]) if ys.size > 1 else ALPHA_STEP)
    ny, iy, wy = _lerp_index(ys, step, smooth=False)
    nx, ix, wx = _lerp_index(xs, step, smooth=False)
    coarse = np.max([b.signed_distance(ny[:, None] * step, nx[None, :] * step) for b in near], axis=0)
    dist = _interp2(coarse.astype(np.float32), iy, wy, ix, wx)
    dist += np.float32(TISSUE_EDGE_NOISE) * value_noise(ys, xs, 160.0, _salt(plan.seed, "edge"))
    if (dist > 1.0).all():
        return 1.0
    if (dist < -1.0).all():
        return 0.0
    return np.clip(dist / np.float32(2.0) + np.float32(0.5), 0.0, 1.0)


def _span(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    """Index range of the sorted ``coords`` within [lo, hi]."""
    return int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right"))


def _tubule_field(plan: SlidePlan, ys: np.ndarray, xs: np.ndarray, glomeruli: list[Glomerulus]) -> np.ndarray:
    """Normalised distance d' of the nearest tubule: < 0.5 lumen, < 1 wall, >= 1 stroma."""
    dist = np.full((ys.size, xs.size), 9.0, dtype=np.float32)
    s = TUBULE_CELL
    reach = TUBULE_RADIUS[1] + s
    i = np.arange(math.floor((ys[0] - reach) / s), math.floor((ys[-1] + reach) / s) + 1)
    j = np.arange(math.floor((xs[0] - reach) / s), math.floor((xs[-1] + reach) / s) + 1)
    ii, jj = np.meshgrid(i, j, indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()

    def u(name: str) -> np.ndarray:
        return _unit(_hash2(ii, jj, _salt(plan.seed, name))).astype(np.float64)

    present = u("present") > 0.06
    cy = (ii + 0.15 + 0.7 * u("jy")) * s
    cx = (jj + 0.15 + 0.7 * u("jx")) * s
    a = TUBULE_RADIUS[0] + (TUBULE_RADIUS[1] - TUBULE_RADIUS[0]) * u("a")
    b = a / (1.0 + 0.5 * u("aspect"))
    ang = np.pi * u("angle")
    lumen = 0.25 + 0.3 * u("lumen")
    keep = present & (cy + a >= ys[0]) & (cy - a <= ys[-1]) & (cx + a >= xs[0]) & (cx - a <= xs[-1])
    for g in glomeruli:
        keep &= np.hypot(cy - g.cy, cx - g.cx) > g.extent + 0.5 * a
    for k in np.flatnonzero(keep):
        r0, r1 = _span(ys, cy[k] - a[k], cy[k] + a[k])
        c0, c1 = _span(xs, cx[k] - a[k], cx[k] + a[k])
        if r0 >= r1 or c0 >= c1:
            continue
        dy = (ys[r0:r1] - cy[k]).astype(np.float32)[:, None]
        dx = (xs[c0:c1] - cx[k]).astype(np.float32)[None, :]
        co, si = np.float32(math.cos(ang[k]) / a[k]), np.float32(math.sin(ang[k]) / a[k])
        ratio = np.float32(a[k] / b[k])
        pu = dx * co + dy * si
        pv = (dy * co - dx * si) * ratio
        d = np.sqrt(pu * pu + pv * pv)
        lf = np.float32(lumen[k])
        # piecewise rescale so the lumen edge is at 0.5 whatever the tubule's lumen fraction
        d = np.where(d < lf, d * (0.5 / lf), 0.5 + (d - lf) * (0.5 / (1.0 - lf)))
        np.minimum(dist[r0:r1, c0:c1], d, out=dist[r0:r1, c0:c1])
    return dist


def _dots(
    ys: np.ndarray, xs: np.ndarray, cell: float, radius: tuple[float, float], salt: np.uint32
) -> tuple[np.ndarray, np.ndarray]:
    """Round-ish dots (nuclei, capillary lumens), one per cell of a ``cell`` px grid.

    Returns, per pixel, the squared normalised distance to the dot of its cell (< 1
    inside) and the cell's uniform draw in [0, 1) (callers keep a dot when it is below a
    class-dependent density). Each dot lies inside its cell, so only the pixel's own
    cell matters: cell parameters are gathered by row and column, no neighbour search.
    """
    fi = np.floor(ys / cell).astype(np.int64)
    fj = np.floor(xs / cell).astype(np.int64)
    ni = np.arange(fi[0], fi[-1] + 1)
    nj = np.arange(fj[0], fj[-1] + 1)
    h = _hash2(ni[:, None], nj[None, :], salt)
    with np.errstate(over="ignore"):
        draws = [_unit(_mix(h ^ np.uint32((k * 0x68E31DA4) & 0xFFFFFFFF))) for k in range(5)]
    ry = radius[0] + (radius[1] - radius[0]) * draws[1]
    rx = ry * (np.float32(0.7) + np.float32(0.6) * draws[2])
    rx = np.minimum(rx, np.float32(0.45 * cell))
    cy = ni[:, None] * cell + ry + draws[3] * (cell - 2 * ry)
    cx = nj[None, :] * cell + rx + draws[4] * (cell - 2 * rx)
    rows, cols = fi - ni[0], fj - nj[0]

    def full(param: np.ndarray) -> np.ndarray:
        return np.take(np.take(param.astype(np.float32), cols, axis=1), rows, axis=0)

    dy = (ys.astype(np.float32)[:, None] - full(cy)) * full(1.0 / ry)
    dx = (xs.astype(np.float32)[None, :] - full(cx)) * full(1.0 / rx)
    d = dy * dy
    d += dx * dx
    return d, full(_unit(h))


def _draw_glomerulus(g: Glomerulus, ys: np.ndarray, xs: np.ndarray, labels: np.ndarray, seed: int) -> None:
    """Paint one glomerulus (and its tubule-free rim) into ``labels``."""
    ext = g.extent
    r0, r1 = _span(ys, g.cy - ext, g.cy + ext)
    c0, c1 = _span(xs, g.cx - ext, g.cx + ext)
    if r0 >= r1 or c0 >= c1:
        return
    wy, wx = ys[r0:r1], xs[c0:c1]
    dy = (wy - g.cy)[:, None]
    dx = (wx - g.cx)[None, :]
    rho = np.sqrt(dx * dx + dy * dy)
    z = (dx + 1j * dy) / np.maximum(rho, 1e-9)
    r_out = g.outer(z)
    tuft = np.zeros(rho.shape, dtype=bool)
    for ly, lx, lr in g.lobes:  # union of round lobes; Bowman's space fills the notches
        tuft |= (dy - ly) ** 2 + (dx - lx) ** 2 < lr * lr
    sub = labels[r0:r1, c0:c1]
    sub[rho < r_out + g.wall + 8.0] = STROMA
    sub[(rho >= r_out) & (rho < r_out + g.wall)] = CAPSULE
    sub[rho < r_out] = BOWMAN
    tuft &= rho < r_out - 2.0
    # two dot grids of different pitch, so the dense nuclei show no lattice
    nuc1_d, nuc1_u = _dots(wy, wx, 11.0, (2.5, 4.2), _salt(seed, "tuft-nuclei"))
    nuc2_d, nuc2_u = _dots(wy, wx, 13.0, (2.5, 4.2), _salt(seed, "tuft-nuclei-2"))
    cap_d, cap_u = _dots(wy, wx, 12.0, (2.0, 3.8), _salt(seed, "capillaries"))
    t = np.full(sub.shape, TUFT, dtype=np.uint8)
    t[(cap_d < 1.0) & (cap_u < 0.5)] = CAPILLARY
    t[((nuc1_d < 1.0) & (nuc1_u < 0.65)) | ((nuc2_d < 1.0) & (nuc2_u < 0.55))] = TUFT_NUCLEUS
    sub[tuft] = t[tuft]


FIELD_BINS = 50  # tubule field quantisation: d' = bin / FIELD_BINS
_FIELD_LABEL = np.full(FIELD_BINS + 1, STROMA, dtype=np.uint8)
_FIELD_LABEL[:FIELD_BINS] = MEMBRANE  # d' < 1.0
_FIELD_LABEL[: int(0.92 * FIELD_BINS)] = WALL
_FIELD_LABEL[: FIELD_BINS // 2] = LUMEN  # d' < 0.5
_NUCLEUS_DENSITY = np.zeros(FIELD_BINS + 1, dtype=np.float32)  # share of dot cells shown
_NUCLEUS_DENSITY[FIELD_BINS // 2 : int(0.92 * FIELD_BINS)] = 0.55  # epithelium
_NUCLEUS_DENSITY[FIELD_BINS] = 0.12  # interstitial cells


def render_tile(plan: SlidePlan, y0: int, x0: int, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """uint8 (height, width, 3) RGB of the window at ``(y0, x0)`` of a level ``scale`` times coarser.

    Pixel ``(r, c)`` of the level shows the full-res point ``((x0 + c + 0.5) * scale,
    (y0 + r + 0.5) * scale)`` (its centre), so level 0 is ``scale=1``.
    """
    ys = (y0 + np.arange(height) + 0.5) * scale
    xs = (x0 + np.arange(width) + 0.5) * scale
    seed = plan.seed
    # per-pixel grain from a hash of the level's pixel indices (independent of the tile grid)
    grain = _grain(seed, y0, x0, height, width)
    alpha = _tissue_alpha(plan, ys, xs)
    if isinstance(alpha, float) and alpha == 0.0:
        glass = plan.glass + (grain * np.float32(5.0))[..., None]
        return np.clip(glass, 0, 255).astype(np.uint8)

    reach = TUBULE_RADIUS[1] + 2.0 * scale
    near = [
        g
        for g in plan.glomeruli
        if g.cy + g.extent + reach >= ys[0]
        and g.cy - g.extent - reach <= ys[-1]
        and g.cx + g.extent + reach >= xs[0]
        and g.cx - g.extent - reach <= xs[-1]
    ]
    tubules = _tubule_field(plan, ys, xs, near)
    # classes from the tubule field through small lookup tables (cheaper than masks)
    fq = np.minimum(tubules * np.float32(FIELD_BINS), np.float32(FIELD_BINS)).astype(np.uint8)
    nuc_d, nuc_u = _dots(ys, xs, 15.0, (3.6, 5.6), _salt(seed, "nuclei"))
    nucleus = (nuc_d < 1.0) & (nuc_u < _NUCLEUS_DENSITY[fq])
    labels = np.where(nucleus, np.uint8(NUCLEUS), _FIELD_LABEL[fq])
    for g in near:
        _draw_glomerulus(g, ys, xs, labels, seed)

    # stain density varies smoothly across the slide and within classes; the per-pixel
    # grain dithers its quantisation into the (label, density) colour table
    low = fractal_noise(ys, xs, 700.0, 2, _salt(seed, "stain"))
    mid = value_noise(ys, xs, 24.0, _salt(seed, "texture"))
    od = np.float32(1.0) + np.float32(0.10) * low + np.float32(0.10) * mid
    q = (od - np.float32(OD_RANGE[0])) * np.float32((OD_LEVELS - 1) / (OD_RANGE[1] - OD_RANGE[0]))
    q += grain * np.float32(3.0) + np.float32(0.5)
    q = np.clip(q, 0, OD_LEVELS - 1).astype(np.uint16)
    q += labels.astype(np.uint16) * np.uint16(OD_LEVELS)
    img = np.take(plan.colours, q, axis=0)
    if not isinstance(alpha, float):
        glass = plan.glass + (grain * np.float32(5.0))[..., None]
        a = alpha[..., None]
        img = np.clip(glass * (np.float32(1.0) - a) + img * a, 0, 255).astype(np.uint8)
    return img
