"""Polygon files <-> masks: parsing, repair, windowed rasterisation, RLE, QuPath export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
from affine import Affine
from shapely.geometry import MultiPolygon, Point, Polygon, box

from pipeline import rle
from pipeline.annotations import (
    PolygonIndex,
    centres,
    mask_to_polygons,
    polygons_to_rle,
    rasterize_window,
    read_polygons,
    write_geojson,
    write_hubmap_json,
)
from pipeline.errors import AnnotationError, PipelineError


def feature(geometry: dict, name: str | None = "glomerulus", **props) -> dict:
    """A feature shaped like the Kaggle HuBMAP files."""
    properties = {"isLocked": False, "measurements": [], **props}
    if name is not None:
        properties["classification"] = {"name": name, "colorRGB": -3140401}
    return {"type": "Feature", "id": "PathAnnotationObject", "geometry": geometry, "properties": properties}


def square(x0: float, y0: float, size: float) -> list:
    return [[[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]]


def dump(tmp_path: Path, data, name: str = "slide.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def geoms() -> list:
    """Circles, a polygon with a hole and a two-part MultiPolygon, off the pixel grid."""
    ring = Point(250.3, 120.7).buffer(60.2).difference(Point(255.0, 118.0).buffer(20.5))
    return [
        Point(60.4, 70.9).buffer(33.3),
        ring,
        MultiPolygon([box(20.2, 200.6, 90.7, 260.1), box(120.5, 230.5, 140.5, 290.5)]),
        Polygon([(300.2, 220.1), (390.6, 240.3), (350.1, 295.7)]),
    ]


# ------------------------------------------------------------------------- reading


def test_reads_polygon_and_multipolygon(tmp_path: Path) -> None:
    data = [
        feature({"type": "Polygon", "coordinates": square(10, 20, 30)}),
        feature({"type": "MultiPolygon", "coordinates": [square(100, 100, 10), square(200, 100, 20)]}),
    ]
    out = read_polygons(dump(tmp_path, data))
    assert [g.geom_type for g in out] == ["Polygon", "MultiPolygon"]
    assert out[0].area == pytest.approx(900.0)
    assert out[1].area == pytest.approx(100.0 + 400.0)
    assert out[0].bounds == (10.0, 20.0, 40.0, 50.0)  # (x, y) kept as GeoJSON


def test_feature_collection_and_class_filter(tmp_path: Path) -> None:
    data = {
        "type": "FeatureCollection",
        "features": [
            feature({"type": "Polygon", "coordinates": square(0, 0, 10)}, name="glomerulus"),
            feature({"type": "Polygon", "coordinates": square(50, 0, 10)}, name="Cortex"),
            feature({"type": "Polygon", "coordinates": square(100, 0, 10)}, name=None),
            feature({"type": "Point", "coordinates": [5, 5]}, name="marker"),  # filtered out before checks
            feature({"type": "Polygon", "coordinates": square(150, 0, 10)}, name="Glomerulus"),
        ],
    }
    path = dump(tmp_path, data)
    kept = read_polygons(path, classes=["glomerulus"])
    assert [g.bounds[0] for g in kept] == [0.0, 150.0]  # case-insensitive, file order
    assert [g.bounds[0] for g in read_polygons(path, classes=["cortex", "medulla"])] == [50.0]
    with pytest.raises(AnnotationError, match="unsupported geometry type 'Point'"):
        read_polygons(path)  # without a filter the Point feature counts


def test_self_intersecting_bowtie_is_repaired_keeping_both_lobes(tmp_path: Path) -> None:
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    assert not Polygon(bowtie[0]).is_valid
    (geom,) = read_polygons(dump(tmp_path, [feature({"type": "Polygon", "coordinates": bowtie})]))
    assert geom.is_valid
    assert geom.geom_type == "MultiPolygon"
    assert geom.area == pytest.approx(50.0)  # both triangles (buffer(0) would keep one)


def test_overlapping_multipolygon_parts_are_merged_and_zero_area_dropped(tmp_path: Path) -> None:
    data = [
        feature({"type": "MultiPolygon", "coordinates": [square(0, 0, 10), square(5, 0, 10)]}),
        feature({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [20, 0], [0, 0]]]}),  # flat
    ]
    out = read_polygons(dump(tmp_path, data))
    assert len(out) == 1
    assert out[0].is_valid and out[0].area == pytest.approx(150.0)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("42", "expected a list of features"),
        ('{"type": "Polygon", "coordinates": []}', "expected a list of features"),
        ('{"type": "FeatureCollection"}', "without a 'features' list"),
        ("[1, 2]", "feature 0 is a int"),
        (
            json.dumps([feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})]),
            "feature 0: unsupported geometry type 'LineString'",
        ),
        (
            json.dumps([feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})]),
            "feature 0: malformed Polygon coordinates",
        ),
        (json.dumps([feature({"type": "Polygon", "coordinates": "oops"})]), "feature 0: malformed Polygon"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 1], [1, 0], [0, 0]]]}}]',
            "non-finite coordinates",
        ),
    ],
)
def test_bad_files_raise_annotation_error_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad-slide.json"
    path.write_text(content)
    with pytest.raises(AnnotationError) as info:
        read_polygons(path)
    assert isinstance(info.value, PipelineError)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)


def test_missing_file_and_binary_garbage(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="missing.json: cannot read polygon file"):
        read_polygons(tmp_path / "missing.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(AnnotationError, match="garbage.json: not valid JSON"):
        read_polygons(garbage)


def test_null_geometry_is_skipped(tmp_path: Path) -> None:
    data = [feature(None), feature({"type": "Polygon", "coordinates": square(0, 0, 4)})]  # type: ignore[arg-type]
    assert [g.area for g in read_polygons(dump(tmp_path, data))] == [16.0]


# ------------------------------------------------------------------------- rasterising


def test_pixel_centre_rule() -> None:
    # pixel (r, c) covers [c, c+1) x [r, r+1): a square on integer edges fills exactly its pixels
    mask = rasterize_window([box(10, 20, 15, 23)], 0, 0, 30, 30)
    assert mask.sum() == 15
    assert mask[20:23, 10:15].all()
    # a pixel counts when its centre is inside: [10.4, 15.6) covers centres 10.5 .. 15.5
    mask = rasterize_window([box(10.4, 20.4, 15.6, 22.6)], 0, 0, 30, 30)
    assert np.argwhere(mask).min(0).tolist() == [20, 10]
    assert np.argwhere(mask).max(0).tolist() == [22, 15]


def test_rasterize_window_equals_window_of_full(geoms: list) -> None:
    full = rasterize_window(geoms, 0, 0, 300, 400)
    area = sum(g.area for g in geoms)
    assert abs(int(full.sum()) - area) / area < 0.01
    index = PolygonIndex(geoms)
    for y0, x0, h, w in [
        (0, 0, 300, 400),
        (37, 81, 100, 150),
        (250, 350, 50, 50),
        (1, 2, 3, 4),
        (123, 0, 1, 400),
    ]:
        window = rasterize_window(geoms, y0, x0, h, w)
        assert window.dtype == np.uint8 and window.shape == (h, w)
        np.testing.assert_array_equal(window, full[y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(index(y0, x0, h, w), window)
    # windows reaching outside the slide: the inside part matches, the rest is empty
    window = rasterize_window(geoms, -20, 380, 60, 50)
    np.testing.assert_array_equal(window[20:, :20], full[:40, 380:])
    assert window[:20].sum() == 0 and window[:, 20:].sum() == 0


def test_index_only_rasterises_what_meets_the_window(geoms: list) -> None:
    index = PolygonIndex(geoms)
    assert index.query(0, 0, 10, 10) == []
    assert len(index.query(60, 60, 5, 5)) == 1
    assert rasterize_window(geoms, 0, 0, 10, 10).sum() == 0
    assert rasterize_window([], 5, 5, 20, 30).shape == (20, 30)
    assert rasterize_window(geoms, 0, 0, 0, 10).shape == (0, 10)


@pytest.mark.parametrize("strip_width", [1, 7, 64, 4096])
def test_polygons_to_rle_equals_encoding_of_full_mask(geoms: list, strip_width: int) -> None:
    full = rasterize_window(geoms, 0, 0, 300, 400)
    encoded = polygons_to_rle(geoms, (300, 400), strip_width=strip_width)
    assert encoded == rle.encode(full)
    np.testing.assert_array_equal(rle.decode(encoded, (300, 400)), full)


def test_polygons_to_rle_empty_and_clipped() -> None:
    assert polygons_to_rle([], (50, 60)) == ""
    # a polygon hanging over the slide edge is clipped to the slide
    encoded = polygons_to_rle([box(-10, -10, 5, 5)], (50, 60))
    mask = rle.decode(encoded, (50, 60))
    assert mask.sum() == 25 and mask[:5, :5].all()


# ------------------------------------------------------------------------- masks -> polygons


def test_polygons_mask_polygons_keeps_area_within_one_percent(geoms: list) -> None:
    full = rasterize_window(geoms, 0, 0, 300, 400)
    polys = mask_to_polygons(full, simplify_tolerance=1.0)
    assert all(isinstance(p, Polygon) and p.is_valid for p in polys)
    original = sum(g.area for g in geoms)
    assert abs(sum(p.area for p in polys) - original) / original < 0.01
    back = rasterize_window(polys, 0, 0, 300, 400)
    dice = 2 * np.logical_and(back, full).sum() / (back.sum() + full.sum())
    assert dice > 0.99
    assert any(len(p.interiors) == 1 for p in polys)  # the ring keeps its hole


def test_mask_to_polygons_with_scale_and_offset(geoms: list) -> None:
    # a 1/4 resolution mask of the window at (y0, x0) = (100, 200) of a bigger slide
    y0, x0, scale = 100, 200, 4.0
    shifted = [Polygon(np.asarray(g.exterior.coords) + [x0, y0]) for g in geoms[:1]]
    low = rasterio.features.rasterize(
        shifted, out_shape=(40, 50), transform=Affine(scale, 0, x0, 0, scale, y0)
    )
    polys = mask_to_polygons(low, y0=y0, x0=x0, scale=scale, simplify_tolerance=1.0)
    assert len(polys) == 1
    assert polys[0].centroid.distance(shifted[0].centroid) < 1.0
    assert abs(polys[0].area - shifted[0].area) / shifted[0].area < 0.05


def test_mask_to_polygons_min_area_and_empty() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:7, 5:7] = True  # 4 px
    mask[20:40, 20:40] = True  # 400 px
    assert len(mask_to_polygons(mask)) == 2
    (big,) = mask_to_polygons(mask, min_area=10)
    assert big.area == pytest.approx(400.0)
    assert mask_to_polygons(np.zeros((10, 10), np.uint8)) == []


def test_centres_are_y_x_ints() -> None:
    assert centres([box(10, 100, 30, 140), Point(7.6, 3.2).buffer(2)]) == [(120, 20), (3, 8)]


# ------------------------------------------------------------------------- writing


def test_write_geojson_has_qupath_structure_and_reads_back(tmp_path: Path, geoms: list) -> None:
    path = tmp_path / "out" / "pred.geojson"
    write_geojson(geoms, path)
    assert [p.name for p in path.parent.iterdir()] == ["pred.geojson"]  # no temporary left
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    assert len(data["features"]) == len(geoms)
    for feat in data["features"]:
        assert feat["type"] == "Feature"
        assert feat["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert feat["properties"]["objectType"] == "annotation"
        cls = feat["properties"]["classification"]
        assert cls["name"] == "glomerulus"
        assert len(cls["color"]) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
    back = read_polygons(path, classes=["glomerulus"])
    for a, b in zip(geoms, back):
        assert b.symmetric_difference(a).area < 0.01 * a.area


def test_write_hubmap_json_round_trips_exactly(tmp_path: Path, geoms: list) -> None:
    path = tmp_path / "train" / "abc123def.json"
    write_hubmap_json(geoms, path, decimals=None)
    data = json.loads(path.read_text())
    assert isinstance(data, list) and data[0]["properties"]["classification"]["name"] == "glomerulus"
    back = read_polygons(path, classes=["glomerulus"])
    assert len(back) == len(geoms)
    assert all(a.equals_exact(b, 0.0) for a, b in zip(geoms, back))
    write_hubmap_json(geoms, path, decimals=0)  # Kaggle-style integer vertices
    ints = json.loads(path.read_text())[0]["geometry"]["coordinates"][0][0]
    assert all(isinstance(v, int) for v in ints)
