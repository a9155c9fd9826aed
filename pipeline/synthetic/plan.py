"""The plan of a slide: tissue outlines and glomeruli as small object lists (:func:`plan_slide`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon

from pipeline.errors import ConfigError
from pipeline.progress import get_logger
from pipeline.synthetic.noise import _point_noise, _salt
from pipeline.synthetic.palette import BASE_PALETTE, GLASS, _colour_table, _slide_palette

log = get_logger(__name__)

#: Glomeruli per full-res pixel of tissue (~1 per 1000 x 1000 px).
GLOMERULUS_DENSITY = 1.0e-6
OUTER_RADIUS = (75.0, 150.0)  # of the labelled region (tuft + Bowman's space), px
TISSUE_EDGE_NOISE = 24.0  # amplitude of the ragged tissue edge, px


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
