"""GeoJSON polygons <-> masks: HuBMAP / QuPath polygon files, windowed rasterisation.

Coordinates: polygons are in GeoJSON ``(x, y)`` full-resolution pixel units, where the
pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``. Rasterisation uses GDAL's
default rule (a pixel is inside when its centre ``(c + 0.5, r + 0.5)`` is), so any window
of a slide is the same window of the full rasterisation, and the full-resolution mask
never has to exist: :func:`polygons_to_rle` streams column strips into the RLE encoder.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pipeline.atomic import atomic_path
from pipeline.errors import AnnotationError, DataError
from pipeline.progress import get_logger
from pipeline.rle import RLEEncoder

log = get_logger(__name__)

PathLike = str | os.PathLike[str]

#: Geometry types a polygon file may hold.
SUPPORTED_TYPES = ("Polygon", "MultiPolygon")

#: Largest polygon file read (bytes). json + shapely take ~15x the file size in memory; real
#: HuBMAP glomerulus files are a few MB, so 32 MiB (~0.5 GB while reading) is well above them.
MAX_POLYGON_BYTES = 32 * 2**20

#: Default colour of exported annotations (QuPath shows it), per class name.
DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {"glomerulus": (0, 200, 90)}


# --------------------------------------------------------------------------- reading


def _features(data: Any, path: Path) -> list[Any]:
    """The feature list of a HuBMAP list, a FeatureCollection or a single Feature."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationError(path, "FeatureCollection without a 'features' list")
            return features
        if kind == "Feature":
            return [data]
        raise AnnotationError(
            path, f"expected a list of features or a FeatureCollection, got an object of type {kind!r}"
        )
    raise AnnotationError(
        path, f"expected a list of features or a FeatureCollection, got {type(data).__name__}"
    )


def class_name(feature: dict[str, Any]) -> str | None:
    """``properties.classification.name`` (QuPath / HuBMAP), or None when absent."""
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return name if isinstance(name, str) else None
    if isinstance(cls, str):  # some exporters write the bare name
        return cls
    return None


def polygonal_part(geom: BaseGeometry) -> BaseGeometry | None:
    """The polygonal part of a geometry, made valid; None if nothing with area is left.

    ``make_valid`` keeps both lobes of a self-intersecting bow-tie (``buffer(0)``, the
    older idiom, drops one), but may return lines or points for collapsed rings, which
    are dropped here. ``buffer(0)`` is the fallback when GEOS cannot repair.
    """
    if geom.is_empty:
        return None
    if isinstance(geom, (Polygon, MultiPolygon)) and geom.is_valid:
        return geom if geom.area > 0 else None
    if not geom.is_valid:
        try:
            geom = shapely.make_valid(geom)
        except shapely.errors.GEOSException:
            geom = geom.buffer(0)
    parts: list[Polygon] = []
    stack = [geom]
    while stack:
        g = stack.pop()
        if isinstance(g, Polygon):
            if not g.is_empty and g.area > 0:
                parts.append(g)
        elif hasattr(g, "geoms"):  # MultiPolygon, GeometryCollection
            stack.extend(reversed(g.geoms))
    if not parts:
        return None
    out = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    if not out.is_valid:  # union of valid parts is valid; belt and braces
        out = out.buffer(0)
    return None if out.is_empty or out.area <= 0 else out


def read_polygons(
    path: PathLike, classes: Iterable[str] | None = None, max_bytes: int = MAX_POLYGON_BYTES
) -> list[BaseGeometry]:
    """Polygons of a HuBMAP / QuPath GeoJSON file, repaired, in ``(x, y)`` full-res pixels.

    Accepts a list of features (Kaggle's ``train/{id}.json``), a FeatureCollection or a
    single Feature; geometries must be Polygon or MultiPolygon (null geometries are
    skipped). ``classes`` keeps only features whose ``properties.classification.name``
    matches one of the names (case-insensitive). One geometry per kept feature, in file
    order; features with no area after repair are dropped. A file over ``max_bytes`` is a
    DataError naming it and the limit, before anything is read (memory is ~15x the file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError(
                path, f"polygon file of {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit "
                "(reading takes ~15x its size in memory; HuBMAP files are a few MB): simplify or split it"
            )
        with open(path, "rb") as fh:
            data = json.load(fh)
    except OSError as err:
        raise AnnotationError(path, f"cannot read polygon file: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(path, f"not valid JSON: {err}") from None
    wanted = None if classes is None else {c.lower() for c in classes}
    out: list[BaseGeometry] = []
    dropped = 0
    for i, feature in enumerate(_features(data, path)):
        if not isinstance(feature, dict):
            raise AnnotationError(path, f"feature {i} is a {type(feature).__name__}, not an object")
        if wanted is not None:
            name = class_name(feature)
            if name is None or name.lower() not in wanted:
                continue
        geometry = feature.get("geometry")
        if geometry is None:
            continue
        if not isinstance(geometry, dict):
            raise AnnotationError(path, f"feature {i}: 'geometry' is not an object")
        kind = geometry.get("type")
        if kind not in SUPPORTED_TYPES:
            raise AnnotationError(
                path, f"feature {i}: unsupported geometry type {kind!r} (expected Polygon or MultiPolygon)"
            )
        try:
            with warnings.catch_warnings():  # NaN coordinates warn; they are reported below
                warnings.simplefilter("ignore", RuntimeWarning)
                geom = shape(geometry)
        except Exception as err:  # shapely raises ValueError, TypeError, IndexError, GEOSException
            raise AnnotationError(path, f"feature {i}: malformed {kind} coordinates ({err})") from None
        if not geom.is_empty and not np.isfinite(shapely.get_coordinates(geom)).all():
            raise AnnotationError(path, f"feature {i}: non-finite coordinates")
        repaired = polygonal_part(geom)
        if repaired is None:
            dropped += 1
            continue
        out.append(repaired)
    if dropped:
        log.warning("%s: dropped %d feature(s) with no area after repair", path, dropped)
    return out


# --------------------------------------------------------------------------- rasterising


class PolygonIndex:
    """Polygons with an STRtree, so each window only rasterises what intersects it.

    Build it once per slide and reuse it for every window (tiles, RLE strips).
    """

    def __init__(self, geoms: Iterable[BaseGeometry]) -> None:
        self.geoms: tuple[BaseGeometry, ...] = tuple(g for g in geoms if g is not None and not g.is_empty)
        self.tree = shapely.STRtree(self.geoms)

    def __len__(self) -> int:
        return len(self.geoms)

    def query(self, y0: float, x0: float, height: float, width: float) -> list[BaseGeometry]:
        """Polygons whose bounding box meets the window (rows y0.., cols x0..)."""
        if not self.geoms:
            return []
        hits = self.tree.query(box(x0, y0, x0 + width, y0 + height))
        return [self.geoms[i] for i in np.sort(hits)]

    def rasterize(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """uint8 0/1 mask of the window, pixel-centre rule (see module docstring)."""
        out = np.zeros((height, width), dtype=np.uint8)
        if height <= 0 or width <= 0:
            return out
        hits = self.query(y0, x0, height, width)
        if hits:
            rasterio.features.rasterize(
                hits,
                out_shape=(height, width),
                out=out,
                transform=Affine.translation(x0, y0),
                default_value=1,
                all_touched=False,
            )
        return out

    __call__ = rasterize


def as_index(geoms: Iterable[BaseGeometry] | PolygonIndex) -> PolygonIndex:
    """``geoms`` as a :class:`PolygonIndex` (no copy if it already is one)."""
    return geoms if isinstance(geoms, PolygonIndex) else PolygonIndex(geoms)


def rasterize_window(
    geoms: Iterable[BaseGeometry] | PolygonIndex, y0: int, x0: int, height: int, width: int
) -> np.ndarray:
    """uint8 (height, width) mask of full-res window ``(y0, x0)``: 1 inside any polygon.

    Pass a :class:`PolygonIndex` when rasterising many windows of the same slide.
    """
    return as_index(geoms).rasterize(int(y0), int(x0), int(height), int(width))


def polygons_to_rle(
    geoms: Iterable[BaseGeometry] | PolygonIndex, shape: tuple[int, int], strip_width: int = 4096
) -> str:
    """Kaggle RLE of the polygons on a ``shape`` = (height, width) slide.

    Rasterises column strips left to right into :class:`pipeline.rle.RLEEncoder`, so
    memory is one ``height x strip_width`` strip, never the full mask.
    """
    height, width = int(shape[0]), int(shape[1])
    if strip_width <= 0:
        raise ValueError(f"strip_width must be positive, got {strip_width}")
    index = as_index(geoms)
    encoder = RLEEncoder(height, width)
    for x0 in range(0, width, strip_width):
        w = min(strip_width, width - x0)
        encoder.add_columns(index.rasterize(0, x0, height, w))
    return encoder.finish()


# --------------------------------------------------------------------------- masks -> polygons


def mask_to_polygons(
    mask: np.ndarray,
    y0: float = 0,
    x0: float = 0,
    scale: float = 1.0,
    simplify_tolerance: float = 1.0,
    min_area: float = 0.0,
) -> list[Polygon]:
    """Outlines of the foreground of ``mask`` as polygons in full-res ``(x, y)``.

    ``mask`` may be at any resolution: its pixel ``(r, c)`` covers full-res
    ``[x0 + c*scale, x0 + (c+1)*scale) x [y0 + r*scale, ...)``. Outlines follow pixel
    edges (4-connectivity) and are then simplified by ``simplify_tolerance`` full-res
    pixels; polygons under ``min_area`` full-res px^2 are dropped. Holes are kept.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    fg = mask.astype(bool, copy=False)
    if not fg.any():
        return []
    transform = Affine(scale, 0.0, x0, 0.0, scale, y0)
    out: list[Polygon] = []
    for geometry, _value in rasterio.features.shapes(
        fg.astype(np.uint8), mask=fg, connectivity=4, transform=transform
    ):
        poly = shape(geometry)
        if simplify_tolerance > 0:
            poly = poly.simplify(simplify_tolerance, preserve_topology=True)
        if not poly.is_valid:
            repaired = polygonal_part(poly)
            if repaired is None:
                continue
            polys = list(repaired.geoms) if isinstance(repaired, MultiPolygon) else [repaired]
        else:
            polys = [poly]
        out.extend(p for p in polys if p.area > 0 and p.area >= min_area)
    return out


def centres(geoms: Iterable[BaseGeometry]) -> list[tuple[int, int]]:
    """(y, x) full-res centroid of each polygon, rounded to int (e.g. to centre tiles)."""
    out = []
    for g in geoms:
        c = g.centroid
        out.append((int(round(c.y)), int(round(c.x))))
    return out


# --------------------------------------------------------------------------- writing


def _polygons(geom: BaseGeometry) -> BaseGeometry | None:
    """Polygon/MultiPolygon part of ``geom`` (other types are not annotations)."""
    if isinstance(geom, (Polygon, MultiPolygon)) and geom.is_valid:
        return None if geom.is_empty else geom
    return polygonal_part(geom)


def _geometry_json(geom: BaseGeometry, decimals: int | None) -> dict[str, Any]:
    """GeoJSON geometry dict, coordinates rounded to ``decimals`` (ints for 0, as is for None)."""
    geometry = mapping(geom)
    return {"type": geometry["type"], "coordinates": _lists(geometry["coordinates"], decimals)}


def _lists(obj: Any, decimals: int | None) -> Any:
    """Nested tuples of coordinates -> nested lists, each number rounded."""
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], (int, float)):
        if decimals is None:
            return [float(v) for v in obj]
        if decimals <= 0:
            return [int(math.floor(v + 0.5)) for v in obj]
        return [round(float(v), decimals) for v in obj]
    return [_lists(o, decimals) for o in obj]


def _write_json(obj: Any, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, separators=(",", ":"))
            fh.write("\n")


def _geometries_json(geoms: Iterable[BaseGeometry], decimals: int | None) -> Iterator[dict[str, Any]]:
    """GeoJSON geometry of each polygonal geometry, shared by the QuPath and Kaggle writers."""
    for geom in geoms:
        polygonal = _polygons(geom)
        if polygonal is not None:
            yield _geometry_json(polygonal, decimals)


def _colour(name: str, color: Sequence[int] | None) -> list[int]:
    rgb = color if color is not None else DEFAULT_COLOURS.get(name.lower(), (255, 0, 0))
    return [int(v) for v in rgb]


def write_geojson(
    geoms: Iterable[BaseGeometry],
    path: PathLike,
    name: str = "glomerulus",
    color: Sequence[int] | None = None,
    decimals: int | None = 2,
) -> None:
    """Write polygons as a GeoJSON FeatureCollection that QuPath imports as annotations.

    Each feature: ``{"type": "Feature", "geometry": ..., "properties": {"objectType":
    "annotation", "classification": {"name": name, "color": [r, g, b]}}}``. Coordinates
    are rounded to ``decimals`` (None: exact); written atomically.
    """
    rgb = _colour(name, color)
    features = [
        {
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "objectType": "annotation",
                "classification": {"name": name, "color": rgb},
            },
        }
        for geometry in _geometries_json(geoms, decimals)
    ]
    _write_json({"type": "FeatureCollection", "features": features}, path)


def _colour_rgb_int(rgb: Sequence[int]) -> int:
    """QuPath's legacy packed ARGB int (negative as a signed 32-bit value)."""
    value = (0xFF << 24) | (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])
    return value - (1 << 32)


def write_hubmap_json(
    geoms: Iterable[BaseGeometry],
    path: PathLike,
    name: str = "glomerulus",
    color: Sequence[int] | None = None,
    decimals: int | None = 2,
) -> None:
    """Write polygons in the Kaggle HuBMAP ``train/{id}.json`` layout: a bare list of features.

    Properties mimic the competition files (``classification.name``/``colorRGB``,
    ``isLocked``, ``measurements``); coordinates rounded to ``decimals`` (0: integers like
    the originals; None: exact, so reading the file back gives the same polygons).
    Written atomically.
    """
    colour = _colour_rgb_int(_colour(name, color))
    features = [
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": geometry,
            "properties": {
                "classification": {"name": name, "colorRGB": colour},
                "isLocked": False,
                "measurements": [],
            },
        }
        for geometry in _geometries_json(geoms, decimals)
    ]
    _write_json(features, path)
