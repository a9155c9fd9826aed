"""Synthetic kidney-like slides in the Kaggle HuBMAP layout, for demos, tests and benchmarks.

A slide is planned once from its seed (tissue outlines and glomeruli: small object
lists) and then rendered tile by tile straight into a tiled TIFF: each output tile is
computed from the plan alone, with hash-based noise and per-cell tubules that do not
depend on the tile grid, so any slide size is made with memory bounded by one tile.

Content, in full-resolution pixels (~0.5 um/px like the HuBMAP slides):

- glass: near-white (~242) with faint noise;
- tissue: one large smooth irregular blob (or two, on slides >= 3000 px), pale
  eosin-pink interstitium with a slightly ragged edge;
- tubules: one per cell of a jittered 50 px grid, rotated ellipses 30-76 px across with a
  darker pink epithelial wall, a thin magenta basement membrane, nuclei and a pale lumen;
- glomeruli (~1 per mm^2 of tissue = 1 per 1e6 px^2): round, lobulated tufts, purple
  (haematoxylin-rich) with dense nuclei and pale capillary specks, inside a pale
  Bowman's space, a thin capsule wall and a tubule-free rim; outer diameter 150-300 px.

Label rule: the glomerulus mask is the tuft **plus Bowman's space**, i.e. everything
inside the outer edge of the pale ring; the capsule wall just outside it is not
labelled. The image draws that edge from the same analytic outline the polygon is
sampled from (vertices every ~3 px, sagitta < 0.01 px), so the drawn object and
its label agree to the pixel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from shapely.geometry import Polygon

from pipeline.annotations import polygons_to_rle, write_hubmap_json
from pipeline.atomic import atomic_path, write_csv_atomic
from pipeline.errors import ConfigError
from pipeline.progress import get_logger, progress

log = get_logger(__name__)

PathLike = str | os.PathLike[str]

TILE = 512
JPEG_QUALITY = 90
#: Glomeruli per full-res pixel of tissue (~1 per 1000 x 1000 px).
GLOMERULUS_DENSITY = 1.0e-6
OUTER_RADIUS = (75.0, 150.0)  # of the labelled region (tuft + Bowman's space), px
TUBULE_CELL = 50.0  # jittered grid spacing of tubules, px
TUBULE_RADIUS = (15.0, 38.0)  # semi-major axis, px
TISSUE_EDGE_NOISE = 24.0  # amplitude of the ragged tissue edge, px
RLE_STRIP_BYTES = 32 * 2**20  # mask strip rasterised at a time for train.csv

# ----------------------------------------------------------------------------- palette
# Labels of the rendered classes; colours are RGB before the slide's stain variation.
STROMA, WALL, LUMEN, MEMBRANE, NUCLEUS, BOWMAN, CAPSULE, TUFT, TUFT_NUCLEUS, CAPILLARY = range(10)
BASE_PALETTE = np.array(
    [
        (236, 206, 228),  # STROMA: pale eosin interstitium
        (218, 160, 204),  # WALL: tubular epithelium, darker pink
        (246, 236, 245),  # LUMEN: nearly white
        (196, 92, 170),  # MEMBRANE: magenta basement membrane
        (112, 82, 152),  # NUCLEUS: haematoxylin
        (247, 238, 246),  # BOWMAN: pale Bowman's space
        (202, 118, 182),  # CAPSULE: Bowman's capsule wall
        (150, 92, 168),  # TUFT: purple glomerular tuft
        (84, 48, 128),  # TUFT_NUCLEUS: dense dark nuclei
        (226, 196, 228),  # CAPILLARY: pale capillary lumens
    ],
    dtype=np.float32,
)
GLASS = np.array((242.0, 241.0, 244.0), dtype=np.float32)


# ----------------------------------------------------------------------------- hashing / noise
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


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TissueBlob:
    """A tissue piece: r(theta) = 1 + Re sum_k c_k e^{ik theta} in coordinates scaled by (sy, sx)."""

    cy: float
    cx: float
    sy: float
    sx: float
    coef: tuple[complex, ...]  # c_k for k = 1.. len(coef)

    @property
    def amplitude(self) -> float:
        return float(sum(abs(c) for c in self.coef))

    def radius(self, z: np.ndarray) -> np.ndarray:
        """r(theta) for unit complex directions ``z``."""
        r = np.ones(z.shape, dtype=np.float32 if z.dtype == np.complex64 else np.float64)
        zk = np.ones_like(z)
        for c in self.coef:
            zk = zk * z
            r += (c * zk).real
        return r

    def signed_distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Approximate distance inside the outline in px (> 0 inside), broadcasting y and x."""
        v = (np.asarray(y) - self.cy) / self.sy
        u = (np.asarray(x) - self.cx) / self.sx
        rho = np.sqrt(u * u + v * v)
        z = (u + 1j * v) / np.maximum(rho, 1e-9)
        return (self.radius(z) - rho) * min(self.sy, self.sx)

    def polygon(self, n: int = 720) -> Polygon:
        """The smooth outline (without the small edge noise), (x, y)."""
        theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        z = np.exp(1j * theta)
        r = self.radius(z)
        return Polygon(np.column_stack([self.cx + self.sx * r * z.real, self.cy + self.sy * r * z.imag]))


@dataclass(frozen=True)
class Glomerulus:
    """A glomerulus: outer (labelled) outline r_o(theta) around a tuft of round lobes."""

    cy: float
    cx: float
    radius: float  # mean outer radius R_o, px
    coef: tuple[complex, complex]  # c2, c3 of the outer outline
    gap: float  # minimum Bowman's space width, px
    lobes: tuple[tuple[float, float, float], ...]  # (dy, dx, radius) of the tuft's discs
    wall: float  # capsule wall thickness, px

    @property
    def r_max(self) -> float:
        """Upper bound of r_o."""
        return self.radius * (1.0 + sum(abs(c) for c in self.coef))

    @property
    def extent(self) -> float:
        """Radius of everything drawn for it (capsule wall and tubule-free rim included)."""
        return self.r_max + self.wall + 8.0

    def outer(self, z: np.ndarray) -> np.ndarray:
        z2 = z * z
        return self.radius * (1.0 + (self.coef[0] * z2).real + (self.coef[1] * z2 * z).real)

    def polygon(self) -> Polygon:
        """The labelled outline, vertices every ~3 px, rounded to 1/100 px (JSON-exact)."""
        n = max(96, int(math.ceil(2 * math.pi * self.r_max / 3.0)))
        theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        z = np.exp(1j * theta)
        r = self.outer(z)
        xy = np.column_stack([self.cx + r * z.real, self.cy + r * z.imag])
        return Polygon(np.round(xy, 2))


OD_LEVELS = 64
OD_RANGE = (0.55, 1.45)


def _colour_table(palette: np.ndarray) -> np.ndarray:
    """uint8 (n_labels * OD_LEVELS, 3): the palette at each stain density (Beer-Lambert-ish)."""
    od = np.linspace(*OD_RANGE, OD_LEVELS, dtype=np.float32)
    table = 255.0 - (255.0 - palette[:, None, :]) * od[None, :, None]
    return np.clip(table, 0, 255).round().astype(np.uint8).reshape(-1, 3)


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """Everything a slide shows, as small object lists; render any window with :func:`render_tile`."""

    height: int
    width: int
    seed: int
    blobs: tuple[TissueBlob, ...]
    glomeruli: tuple[Glomerulus, ...]
    palette: np.ndarray  # (n_labels, 3) float32, after the slide's stain variation
    glass: np.ndarray  # (3,) float32
    colours: np.ndarray = field(init=False, repr=False)  # uint8 (n_labels * OD_LEVELS, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "colours", _colour_table(self.palette))

    def polygons(self) -> list[Polygon]:
        """Glomerulus outlines (the labels), (x, y) full-res."""
        return [g.polygon() for g in self.glomeruli]

    def tissue_polygons(self) -> list[Polygon]:
        """Tissue outlines (smooth, i.e. without the few-px edge noise)."""
        return [b.polygon() for b in self.blobs]

    def tissue_distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Signed distance to the tissue edge in px (> 0 inside) at points, edge noise included."""
        y = np.asarray(y, np.float64)
        x = np.asarray(x, np.float64)
        d = np.max([b.signed_distance(y, x) for b in self.blobs], axis=0)
        return d + TISSUE_EDGE_NOISE * _point_noise(y, x, 160.0, _salt(self.seed, "edge"))

    def tissue_area(self) -> float:
        """Area of the smooth tissue outlines, px^2."""
        return float(sum(p.area for p in self.tissue_polygons()))


def _slide_palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-slide stain variation: optical-density scaling and a small colour cast."""
    density = rng.uniform(0.85, 1.15)
    cast = rng.uniform(-5.0, 5.0, size=3)
    od = -np.log(np.clip(BASE_PALETTE, 1.0, 255.0) / 255.0) * density
    palette = 255.0 * np.exp(-od) + cast
    glass = GLASS + rng.uniform(-2.0, 2.0, size=3)
    return np.clip(palette, 0, 255).astype(np.float32), np.clip(glass, 0, 255).astype(np.float32)


def _blobs(height: int, width: int, rng: np.random.Generator) -> tuple[TissueBlob, ...]:
    """One piece of tissue, or (slides >= 3000 px) two side by side along the longer axis."""
    n = 2 if rng.random() < 0.4 and min(height, width) >= 3000 else 1
    blobs = []
    for i in range(n):
        if n == 1:
            cy, cx, hy, hx = height / 2, width / 2, height / 2, width / 2
        elif height >= width:
            cy, cx, hy, hx = height * (2 * i + 1) / 4, width / 2, height / 4, width / 2
        else:
            cy, cx, hy, hx = height / 2, width * (2 * i + 1) / 4, height / 2, width / 4
        f = rng.uniform(0.66, 0.74)
        k = np.arange(2, 13)
        amps = rng.uniform(0.5, 1.0, size=k.size) * k**-1.6
        amps *= rng.uniform(0.16, 0.22) / amps.sum()
        phases = rng.uniform(0, 2 * np.pi, size=k.size)
        coef = [0j] + [complex(a * np.exp(1j * p)) for a, p in zip(amps, phases)]
        jy, jx = rng.uniform(-0.04, 0.04, size=2)
        blobs.append(TissueBlob(cy=cy + jy * hy, cx=cx + jx * hx, sy=f * hy, sx=f * hx, coef=tuple(coef)))
    return tuple(blobs)


def _lobes(inner: float, rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """A central disc and 4-7 peripheral lobes, all within radius ``inner`` of the centre."""
    k = int(rng.integers(4, 8))
    phase = rng.uniform(0, 2 * np.pi)
    lobes = [(0.0, 0.0, float(inner * rng.uniform(0.5, 0.62)))]
    for i in range(k):
        r = inner * rng.uniform(0.4, 0.5)
        rho = inner - r - inner * rng.uniform(0.0, 0.05)
        ang = phase + 2 * np.pi * i / k + rng.uniform(-0.15, 0.15)
        lobes.append((float(rho * np.sin(ang)), float(rho * np.cos(ang)), float(r)))
    return tuple(lobes)


def _glomeruli(
    plan_blobs: tuple[TissueBlob, ...],
    height: int,
    width: int,
    seed: int,
    rng: np.random.Generator,
    density: float,
) -> tuple[Glomerulus, ...]:
    """Non-overlapping glomeruli whose capsule and rim lie well inside the tissue."""
    partial = SlidePlan(height, width, seed, plan_blobs, (), BASE_PALETTE, GLASS)
    area = partial.tissue_area()
    target = max(1, int(round(density * area)))
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    placed: list[Glomerulus] = []
    attempts = 0
    while len(placed) < target and attempts < 60 * target + 200:
        attempts += 1
        blob = plan_blobs[int(rng.integers(len(plan_blobs)))]
        # uniform in the ellipse that is inside the outline whatever the angle
        reach = (1.0 - blob.amplitude) * math.sqrt(rng.random())
        angle = rng.uniform(0, 2 * np.pi)
        cy = blob.cy + reach * math.sin(angle) * blob.sy
        cx = blob.cx + reach * math.cos(angle) * blob.sx
        radius = float(np.clip(rng.normal(108.0, 20.0), *OUTER_RADIUS))
        c2 = rng.uniform(0.0, 0.05) * np.exp(1j * rng.uniform(0, 2 * np.pi))
        c3 = rng.uniform(0.0, 0.035) * np.exp(1j * rng.uniform(0, 2 * np.pi))
        gap = float(max(5.0, rng.uniform(0.06, 0.11) * radius))
        g = Glomerulus(
            cy=float(cy),
            cx=float(cx),
            radius=radius,
            coef=(complex(c2), complex(c3)),
            gap=gap,
            lobes=_lobes(radius * (1.0 - abs(c2) - abs(c3)) - gap, rng),
            wall=float(rng.uniform(2.5, 4.5)),
        )
        ring = g.extent + TISSUE_EDGE_NOISE + 16.0
        py, px = cy + ring * np.sin(theta), cx + ring * np.cos(theta)
        if (py < 0).any() or (px < 0).any() or (py >= height).any() or (px >= width).any():
            continue
        if (partial.tissue_distance(py, px) <= 0).any():
            continue
        if any(math.hypot(cy - o.cy, cx - o.cx) < g.extent + o.extent + 30.0 for o in placed):
            continue
        placed.append(g)
    if len(placed) < target:
        log.info("placed %d of %d glomeruli (tissue too crowded or too small)", len(placed), target)
    return tuple(placed)


def plan_slide(height: int, width: int, seed: int, density: float = GLOMERULUS_DENSITY) -> SlidePlan:
    """The slide's tissue, glomeruli and stain, deterministic by ``seed``."""
    if height < 64 or width < 64:
        raise ConfigError(None, f"synthetic slide must be at least 64 x 64 px, got {height} x {width}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    blobs = _blobs(height, width, rng)
    palette, glass = _slide_palette(rng)
    glomeruli = _glomeruli(blobs, height, width, int(seed), rng, density)
    return SlidePlan(int(height), int(width), int(seed), blobs, glomeruli, palette, glass)


# ----------------------------------------------------------------------------- rendering


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


# ----------------------------------------------------------------------------- writing


_COMPRESSIONS = {
    "jpeg": "jpeg",
    "lzw": "lzw",
    "deflate": "zlib",
    "zlib": "zlib",
    "zstd": "zstd",
    "none": None,
    "raw": None,
}


def _compression(compression: str | None) -> tuple[str | None, dict[str, Any] | None]:
    key = "none" if compression is None else str(compression).lower()
    if key not in _COMPRESSIONS:
        raise ConfigError(None, f"unknown compression {compression!r} (one of {', '.join(_COMPRESSIONS)})")
    name = _COMPRESSIONS[key]
    # JPEG stays in RGB (no YCbCr 4:2:0), so every decoder (tifffile, GDAL) gives the same pixels
    return name, ({"level": JPEG_QUALITY, "outcolorspace": "RGB"} if name == "jpeg" else None)


def _level_shapes(height: int, width: int, pyramid: bool, tile: int) -> list[tuple[int, int, int]]:
    """(downsample, height, width) of level 0 and, with ``pyramid``, halvings down to ~one tile."""
    levels = [(1, height, width)]
    while pyramid and max(levels[-1][1], levels[-1][2]) > tile:
        d = levels[-1][0] * 2
        levels.append((d, -(-height // d), -(-width // d)))
    return levels


def _write_tiff(plan: SlidePlan, path: PathLike, tile: int, compression: str | None, pyramid: bool) -> None:
    if tile <= 0 or tile % 16:
        raise ConfigError(None, f"tile size must be a positive multiple of 16, got {tile}")
    codec, codec_args = _compression(compression)
    levels = _level_shapes(plan.height, plan.width, pyramid, tile)
    bigtiff = plan.height * plan.width * 3 >= 2**31
    path = Path(path)

    def tiles(scale: int, h: int, w: int) -> Iterator[np.ndarray]:
        grid = [(ty, tx) for ty in range(0, h, tile) for tx in range(0, w, tile)]
        for ty, tx in progress(grid, total=len(grid), desc=f"{path.name} level x{scale}", logger=log):
            yield render_tile(plan, ty, tx, min(tile, h - ty), min(tile, w - tx), scale=float(scale))

    common = dict(
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression=codec,
        compressionargs=codec_args,
        subsampling=(1, 1) if codec == "jpeg" else None,
        maxworkers=1,
        resolution=(20000.0, 20000.0),
        resolutionunit="CENTIMETER",
    )  # 0.5 um / px
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            _, h, w = levels[0]
            tif.write(tiles(1, h, w), shape=(h, w, 3), subifds=len(levels) - 1 or None, **common)
            for d, h, w in levels[1:]:
                tif.write(tiles(d, h, w), shape=(h, w, 3), subfiletype=1, **common)


def write_synthetic_slide(
    path: PathLike,
    height: int,
    width: int,
    seed: int,
    tile: int = TILE,
    compression: str | None = "jpeg",
    pyramid: bool = False,
) -> list[Polygon]:
    """Write one synthetic slide as a tiled RGB TIFF; return its glomerulus polygons (x, y).

    Memory is one tile plus the plan whatever the size. ``pyramid`` adds halved levels as
    SubIFDs (rendered from the plan at each scale). ``compression``: jpeg (quality 90,
    photometric RGB, no chroma subsampling), lzw, deflate, zstd or none.
    """
    plan = plan_slide(height, width, seed)
    _write_tiff(plan, path, tile, compression, pyramid)
    return plan.polygons()


# ----------------------------------------------------------------------------- data set


def slide_ids(n: int, seed: int) -> list[str]:
    """``n`` distinct Kaggle-like slide ids (9 lowercase hex digits), deterministic by seed."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1D5])
    ids: list[str] = []
    while len(ids) < n:
        sid = f"{int(rng.integers(0, 16**9)):09x}"
        if sid not in ids:
            ids.append(sid)
    return ids


def _patient(rng: np.random.Generator, number: int) -> dict[str, Any]:
    """Plausible donor columns of HuBMAP-20-dataset_information.csv."""
    weight = round(float(rng.uniform(55, 110)), 1)
    height = round(float(rng.uniform(155, 190)), 1)
    return {
        "patient_number": number,
        "race": str(rng.choice(["White", "Black or African American", "Asian"])),
        "ethnicity": str(rng.choice(["Not Hispanic or Latino", "Hispanic or Latino"])),
        "sex": str(rng.choice(["Male", "Female"])),
        "age": int(rng.integers(30, 78)),
        "weight_kilograms": weight,
        "height_centimeters": height,
        "bmi_kg/m^2": round(weight / (height / 100) ** 2, 1),
        "laterality": str(rng.choice(["Left", "Right"])),
        "percent_cortex": 100,
        "percent_medulla": 0,
    }


def make_dataset(
    out_dir: PathLike,
    n_train: int = 4,
    n_test: int = 2,
    height: int = 6144,
    width: int = 6144,
    seed: int = 0,
    compression: str | None = "jpeg",
) -> Path:
    """Write a synthetic data set in the Kaggle layout under ``out_dir``; return it.

    ``train/{id}.tiff`` + ``{id}.json`` (glomerulus polygons, HuBMAP list of features) +
    ``{id}-anatomical-structure.json`` (tissue outline, class "Cortex"), ``test/{id}.tiff``
    (+ anatomical structure), ``train.csv`` and ``test_truth.csv`` (id,encoding: the
    polygons' RLE), ``sample_submission.csv`` (id,predicted empty) and
    ``HuBMAP-20-dataset_information.csv``. Every file is written atomically; the tables
    last, so an interrupted run has no ``train.csv``. Deterministic by ``seed``.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigError(None, f"need at least one slide, got n_train={n_train}, n_test={n_test}")
    out = Path(out_dir)
    ids = slide_ids(n_train + n_test, seed)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xDA7A])
    slide_seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(ids))]
    stale = (
        sorted(
            p.name for split in ("train", "test") for p in (out / split).glob("*.tiff") if p.stem not in ids
        )
        if out.exists()
        else []
    )
    if stale:
        log.warning("%s already holds other slides, left in place: %s", out, ", ".join(stale[:10]))
    truth: dict[str, list[list[str]]] = {"train": [], "test": []}
    info_rows = []
    for k, (sid, slide_seed) in enumerate(zip(ids, slide_seeds)):
        split = "train" if k < n_train else "test"
        plan = plan_slide(height, width, slide_seed)
        log.info("slide %s (%s): %d glomeruli", sid, split, len(plan.glomeruli))
        _write_tiff(plan, out / split / f"{sid}.tiff", TILE, compression, pyramid=False)
        polygons = plan.polygons()
        write_hubmap_json(
            plan.tissue_polygons(),
            out / split / f"{sid}-anatomical-structure.json",
            name="Cortex",
            color=(160, 90, 160),
            decimals=2,
        )
        if split == "train":
            write_hubmap_json(polygons, out / split / f"{sid}.json", name="glomerulus", decimals=None)
        strip = max(256, RLE_STRIP_BYTES // height)  # keeps a strip ~32 MB on tall slides
        truth[split].append([sid, polygons_to_rle(polygons, (height, width), strip_width=min(4096, strip))])
        info_rows.append(
            {
                "image_file": f"{sid}.tiff",
                "width_pixels": width,
                "height_pixels": height,
                "anatomical_structures_segmention_file": f"{sid}-anatomical-structure.json",
                "glomerulus_segmentation_file": f"{sid}.json" if split == "train" else "",
                **_patient(rng, 60000 + k),
            }
        )
    write_csv_atomic(out / "train.csv", ["id", "encoding"], truth["train"])
    write_csv_atomic(out / "test_truth.csv", ["id", "encoding"], truth["test"])
    write_csv_atomic(out / "sample_submission.csv", ["id", "predicted"], [[sid, ""] for sid, _ in truth["test"]])
    header = list(info_rows[0])
    write_csv_atomic(out / "HuBMAP-20-dataset_information.csv", header, [[r[h] for h in header] for r in info_rows])
    return out
