"""bench/real.py's data-set builder: the AIDPATH tiles as mosaic slides in the Kaggle layout.

Only the builder (a few seconds); the benchmark itself runs the whole workflow and is run by hand
(``make real-bench``).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import rle
from pipeline.annotations import polygons_to_rle, read_polygons
from pipeline.dataset import discover_slides, read_encodings
from pipeline.slides import open_slide
from tests.conftest import load_bench_script

TILE = 1024


def load_bench():
    return load_bench_script("real")


@pytest.fixture(scope="module")
def source(shared_data: Path) -> Path:
    src = shared_data / "aidpath-glomeruli"
    if not (src / "images").is_dir():
        pytest.skip(f"AIDPATH tiles not found at {src}")
    return src


@pytest.fixture(scope="module")
def built(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "data"
    assert load_bench().build_dataset(source, out) == out
    return out


@pytest.fixture(scope="module")
def split(built: Path) -> list[dict[str, str]]:
    with open(built / "split.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def stitched_mask(source: Path, tiles: list[dict[str, str]]) -> np.ndarray:
    """The slide's binary mask made here from the source PNGs (red > 127) at split.csv's places."""
    rows = 1 + max(int(t["row"]) for t in tiles)
    cols = 1 + max(int(t["col"]) for t in tiles)
    mask = np.zeros((rows * TILE, cols * TILE), np.uint8)
    for t in tiles:
        y0, x0 = int(t["row"]) * TILE, int(t["col"]) * TILE
        assert (int(t["y0"]), int(t["x0"])) == (y0, x0)
        red = np.asarray(Image.open(source / "masks" / f"{t['tile']}.png").convert("RGB"))[..., 0]
        mask[y0 : y0 + TILE, x0 : x0 + TILE] = red > 127
    return mask


def by_slide(split: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for t in split:
        out.setdefault(t["slide"], []).append(t)
    return out


def test_layout_files(built: Path, split: list[dict[str, str]]) -> None:
    slides = by_slide(split)
    for name in ("train.csv", "test_truth.csv", "sample_submission.csv", "split.csv",
                 "HuBMAP-20-dataset_information.csv", "SOURCE.txt"):  # fmt: skip
        assert (built / name).is_file(), name
    found = {s.id: s.split for s in discover_slides(built)}
    assert found == {sid: tiles[0]["split"] for sid, tiles in slides.items()}
    for sid, kind in found.items():
        assert {t["split"] for t in slides[sid]} == {kind}
        assert (built / kind / f"{sid}.json").is_file() == (kind == "train")
    with open(built / "sample_submission.csv", newline="") as fh:
        sample = list(csv.DictReader(fh))
    assert [r["id"] for r in sample] == sorted(i for i, k in found.items() if k == "test")
    assert all(r["predicted"] == "" for r in sample)
    assert "doi:10.17632/k7nvtgn2x6.3" in (built / "SOURCE.txt").read_text()


def test_every_tile_once_and_two_thirds_train(source: Path, split: list[dict[str, str]]) -> None:
    names = sorted(p.stem for p in (source / "images").glob("*.png"))
    assert len(names) == 24
    assert Counter(t["tile"] for t in split) == Counter(names)  # each of the 24 exactly once
    kinds = Counter(t["split"] for t in split)
    assert kinds == {"train": 16, "test": 8}
    slides = by_slide(split)
    assert Counter(ts[0]["split"] for ts in slides.values()) == {"train": 4, "test": 2}
    for tiles in slides.values():  # full 2 x 2 mosaics, no cell twice
        assert sorted((int(t["row"]), int(t["col"])) for t in tiles) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_truth_is_the_stitched_masks(built: Path, source: Path, split: list[dict[str, str]]) -> None:
    truth = {**read_encodings(built / "train.csv"), **read_encodings(built / "test_truth.csv")}
    slides = by_slide(split)
    assert set(truth) == set(slides)
    for sid, tiles in slides.items():
        expected = stitched_mask(source, tiles)
        decoded = rle.decode(truth[sid], expected.shape, source=sid)
        np.testing.assert_array_equal(decoded, expected, err_msg=sid)
        for t in tiles:  # split.csv's per-tile count agrees
            y0, x0 = int(t["y0"]), int(t["x0"])
            assert int(t["glomerulus_px"]) == int(expected[y0 : y0 + TILE, x0 : x0 + TILE].sum())
        if tiles[0]["split"] == "train":  # the polygons give exactly the same mask back
            polygons = read_polygons(built / "train" / f"{sid}.json")
            assert polygons_to_rle(polygons, expected.shape) == truth[sid]
            features = json.loads((built / "train" / f"{sid}.json").read_text())
            assert isinstance(features, list) and features


def test_slides_are_the_tiles_losslessly(built: Path, source: Path, split: list[dict[str, str]]) -> None:
    for sid, tiles in by_slide(split).items():
        path = built / tiles[0]["split"] / f"{sid}.tiff"
        with open_slide(path) as slide:
            assert slide.shape == (2 * TILE, 2 * TILE)
            for t in tiles:
                got = slide.read(int(t["y0"]), int(t["x0"]), TILE, TILE)
                want = np.asarray(Image.open(source / "images" / f"{t['tile']}.png").convert("RGB"))
                np.testing.assert_array_equal(got, want, err_msg=f"{sid} tile {t['tile']}")


def test_foreign_slides_are_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "test").mkdir(parents=True)
    (out / "test" / "other.tiff").write_bytes(b"")
    with pytest.raises(FileExistsError, match="other.tiff"):
        load_bench().build_dataset(source, out)
