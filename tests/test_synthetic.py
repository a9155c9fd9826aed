"""Synthetic slides and data sets in the Kaggle layout."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shapely.geometry import Polygon

from pipeline import rle
from pipeline.annotations import polygons_to_rle, rasterize_window, read_polygons
from pipeline.errors import ConfigError
from pipeline.synthetic import (
    make_dataset,
    plan_slide,
    render_tile,
    slide_ids,
    write_synthetic_slide,
)

SIZE = 2048


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert make_dataset(out, n_train=2, n_test=1, height=SIZE, width=SIZE, seed=0) == out
    return out


def ids_in(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.tiff"))


def test_layout_and_tables(dataset: Path) -> None:
    train_ids, test_ids = ids_in(dataset / "train"), ids_in(dataset / "test")
    assert len(train_ids) == 2 and len(test_ids) == 1
    for sid in train_ids + test_ids:
        assert re.fullmatch(r"[0-9a-f]{9}", sid)
    for sid in train_ids:
        assert (dataset / "train" / f"{sid}.json").is_file()
        assert (dataset / "train" / f"{sid}-anatomical-structure.json").is_file()
    assert not (dataset / "test" / f"{test_ids[0]}.json").exists()  # test truth stays hidden
    assert not list(dataset.rglob(".*partial"))

    train = read_csv(dataset / "train.csv")
    assert list(train[0]) == ["id", "encoding"]
    assert sorted(r["id"] for r in train) == train_ids
    truth = read_csv(dataset / "test_truth.csv")
    assert [r["id"] for r in truth] == test_ids and truth[0]["encoding"]
    sample = read_csv(dataset / "sample_submission.csv")
    assert list(sample[0]) == ["id", "predicted"]
    assert [(r["id"], r["predicted"]) for r in sample] == [(test_ids[0], "")]

    info = read_csv(dataset / "HuBMAP-20-dataset_information.csv")
    assert {
        "image_file",
        "width_pixels",
        "height_pixels",
        "anatomical_structures_segmention_file",
        "glomerulus_segmentation_file",
        "patient_number",
        "sex",
        "age",
    } <= set(info[0])
    assert sorted(r["image_file"] for r in info) == sorted(f"{s}.tiff" for s in train_ids + test_ids)
    assert all(int(r["width_pixels"]) == SIZE and int(r["height_pixels"]) == SIZE for r in info)


def test_tiff_is_tiled_jpeg_rgb_with_glass_and_tissue(dataset: Path) -> None:
    path = next((dataset / "train").glob("*.tiff"))
    glomerulus = read_polygons(path.with_suffix(".json"))[0].centroid
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.shape == (SIZE, SIZE, 3) and page.dtype == np.uint8
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        image = page.asarray()
    assert image.shape == (SIZE, SIZE, 3)
    corner = image[:64, :64].astype(float)
    assert corner.mean() > 230 and corner.std() < 6  # glass
    y, x = int(glomerulus.y), int(glomerulus.x)
    around = image[y - 200 : y + 200, x - 200 : x + 200].astype(float)
    assert around[..., 1].mean() < 215  # pink/purple tissue absorbs green


def test_train_csv_is_exactly_the_rasterised_polygons(dataset: Path) -> None:
    encodings = {r["id"]: r["encoding"] for r in read_csv(dataset / "train.csv")}
    for sid, encoding in encodings.items():
        polygons = read_polygons(dataset / "train" / f"{sid}.json", classes=["glomerulus"])
        assert polygons and all(isinstance(p, Polygon) for p in polygons)
        mask = rle.decode(encoding, (SIZE, SIZE), source="train.csv")
        np.testing.assert_array_equal(mask, rasterize_window(polygons, 0, 0, SIZE, SIZE))
        diameters = [2 * np.sqrt(p.area / np.pi) for p in polygons]
        assert all(140 <= d <= 310 for d in diameters)


def test_labels_match_the_drawn_outline(dataset: Path) -> None:
    """Just inside the label edge: pale Bowman's space; just outside: the darker capsule wall."""
    sid = ids_in(dataset / "train")[0]
    polygons = read_polygons(dataset / "train" / f"{sid}.json")
    image = tifffile.imread(dataset / "train" / f"{sid}.tiff").astype(float).mean(axis=2)
    for poly in polygons:
        x0, y0, x1, y1 = (int(v) for v in poly.bounds)
        y0, x0 = y0 - 20, x0 - 20
        h, w = y1 - y0 + 40, x1 - x0 + 40
        band_in = rasterize_window([poly.buffer(-1.5).difference(poly.buffer(-4.0))], y0, x0, h, w)
        band_out = rasterize_window([poly.buffer(2.0).difference(poly.buffer(0.5))], y0, x0, h, w)
        tile = image[y0 : y0 + h, x0 : x0 + w]
        inside, outside = tile[band_in == 1].mean(), tile[band_out == 1].mean()
        assert inside > 225, inside
        assert inside - outside > 15, (inside, outside)
        core = rasterize_window([poly.buffer(-0.5 * np.sqrt(poly.area / np.pi))], y0, x0, h, w)
        assert tile[core == 1].mean() < 170  # dark purple tuft


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_glomeruli_lie_inside_tissue_and_do_not_overlap(seed: int) -> None:
    plan = plan_slide(SIZE, SIZE, seed)
    polygons = plan.polygons()
    assert polygons
    for i, poly in enumerate(polygons):
        ring = np.asarray(poly.buffer(40.0).exterior.coords)
        assert (plan.tissue_distance(ring[:, 1], ring[:, 0]) > 0).all()  # (y, x)
        for other in polygons[i + 1 :]:
            assert poly.distance(other) > 20
    # and the rendered pixels around them are tissue, not glass
    poly = polygons[0]
    x0, y0, x1, y1 = (int(v) for v in poly.buffer(40).bounds)
    tile = render_tile(plan, y0, x0, y1 - y0, x1 - x0).astype(float)
    rim = rasterize_window([poly.buffer(40).difference(poly.buffer(12))], y0, x0, y1 - y0, x1 - x0)
    assert tile[rim == 1][:, 1].mean() < 225


def test_any_window_renders_the_same_pixels() -> None:
    plan = plan_slide(1024, 1536, seed=5)
    big = render_tile(plan, 0, 0, 1024, 1536)
    np.testing.assert_array_equal(render_tile(plan, 100, 200, 300, 700), big[100:400, 200:900])
    np.testing.assert_array_equal(render_tile(plan, 511, 1023, 2, 3), big[511:513, 1023:1026])


def test_uncompressed_slide_holds_exactly_the_rendered_tiles(tmp_path: Path) -> None:
    path = tmp_path / "s.tiff"
    polygons = write_synthetic_slide(path, 700, 1100, seed=9, compression="none")
    image = tifffile.imread(path)
    assert image.shape == (700, 1100, 3)
    np.testing.assert_array_equal(image, render_tile(plan_slide(700, 1100, 9), 0, 0, 700, 1100))
    assert [p.wkb for p in polygons] == [p.wkb for p in plan_slide(700, 1100, 9).polygons()]


def test_pyramid_levels(tmp_path: Path) -> None:
    path = tmp_path / "pyr.tiff"
    write_synthetic_slide(path, 1000, 800, seed=4, tile=256, pyramid=True)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lvl.shape for lvl in levels] == [(1000, 800, 3), (500, 400, 3), (250, 200, 3)]
        assert tif.pages[0].subifds and len(tif.pages) == 1  # levels are SubIFDs of the one page
        full = levels[0].asarray().astype(float)
        half = levels[1].asarray().astype(float)
    reduced = full.reshape(500, 2, 400, 2, 3).mean(axis=(1, 3))
    assert np.abs(reduced - half).mean() < 12  # the same content, rendered at half resolution


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", n_train=1, n_test=1, height=640, width=768, seed=5)
    b = make_dataset(tmp_path / "b", n_train=1, n_test=1, height=640, width=768, seed=5)
    c = make_dataset(tmp_path / "c", n_train=1, n_test=1, height=640, width=768, seed=6)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files_a) == 9
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert ids_in(c / "train") != ids_in(a / "train")
    tiff_a = next((a / "train").glob("*.tiff")).read_bytes()
    tiff_c = next((c / "train").glob("*.tiff")).read_bytes()
    assert tiff_a != tiff_c
    assert (a / "train.csv").read_text() != (c / "train.csv").read_text()


def test_slide_ids_are_distinct_and_deterministic() -> None:
    ids = slide_ids(50, seed=1)
    assert len(set(ids)) == 50 and ids == slide_ids(50, seed=1) and ids != slide_ids(50, seed=2)
    assert ids[:3] == slide_ids(3, seed=1)


def test_rle_of_plan_matches_written_truth(tmp_path: Path) -> None:
    polygons = write_synthetic_slide(tmp_path / "t.tiff", 1024, 1024, seed=11)
    encoded = polygons_to_rle(polygons, (1024, 1024), strip_width=100)
    assert rle.area(encoded) == int(rasterize_window(polygons, 0, 0, 1024, 1024).sum()) > 0


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown compression"):
        write_synthetic_slide("/tmp/never.tiff", 128, 128, seed=0, compression="gif")
    with pytest.raises(ConfigError, match="at least 64"):
        plan_slide(10, 100, seed=0)
    with pytest.raises(ConfigError, match="multiple of 16"):
        write_synthetic_slide("/tmp/never.tiff", 128, 128, seed=0, tile=100)
    with pytest.raises(ConfigError, match="at least one slide"):
        make_dataset("/tmp/never", n_train=0, n_test=0)
    assert not Path("/tmp/never.tiff").exists()
