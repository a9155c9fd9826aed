"""Patch-folder data sets (data_layout: patches | dsb2018): finding, staging, truth, errors, a real run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image
from scipy import ndimage

from pipeline.dataset import read_encodings
from pipeline.errors import DataError
from pipeline.objects import label_objects
from pipeline.patches import (
    find_patches,
    instance_labels,
    read_image,
    separate_touching,
    stage_patches,
    write_mask_png,
)
from pipeline.rle import decode, encode
from pipeline.synthetic import make_nuclei_dataset
from tests.conftest import SHARED_DATA
from tests.workflow_helpers import jobs_run, snakemake

AIDPATH = SHARED_DATA / "aidpath-glomeruli"


def _png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _aidpath_patches(root: Path, train: list[str], test: list[str]) -> Path:
    """A ``patches`` folder of real AIDPATH tiles, linked (never copied) from the shared data."""
    if not AIDPATH.is_dir():
        pytest.skip(f"{AIDPATH} not present")
    for split, names in (("train", train), ("test", test)):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            for name in names:
                (root / split / kind / f"{name}.png").symlink_to(AIDPATH / kind / f"{name}.png")
    return root


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_real_patches_are_staged_pixel_for_pixel_with_their_masks(tmp_path: Path) -> None:
    names = sorted(p.stem for p in AIDPATH.glob("images/*.png"))[:3] if AIDPATH.is_dir() else []
    data = _aidpath_patches(tmp_path / "aidp", names[:2], names[2:])
    staged = stage_patches(data, "patches", tmp_path / "staged")

    for name in names:
        split = "train" if name in names[:2] else "test"
        source = np.asarray(Image.open(AIDPATH / "images" / f"{name}.png").convert("RGB"))
        assert np.array_equal(tifffile.imread(staged / split / f"{name}.tiff"), source)
        red = np.asarray(Image.open(AIDPATH / "masks" / f"{name}.png").convert("RGB"))[..., 0] > 127
        table = read_encodings(staged / ("train.csv" if split == "train" else "test_truth.csv"))
        assert np.array_equal(decode(table[name], red.shape), red)
        assert red.any()
    sample = pd.read_csv(staged / "sample_submission.csv", dtype=str)
    assert sample["id"].tolist() == names[2:]


def test_touching_instances_are_kept_apart_in_the_training_truth_only(tmp_path: Path) -> None:
    data = make_nuclei_dataset(tmp_path / "nuc", n_train=3, n_test=2, size=128, seed=5)
    patches = find_patches(data, "dsb2018")
    assert [p.split for p in patches] == ["train"] * 3 + ["test"] * 2
    staged = stage_patches(data, "dsb2018", tmp_path / "staged")

    touching = 0
    for patch in patches:
        shape = read_image(patch.image).shape[:2]
        labels = instance_labels(patch.masks, shape)
        assert labels.max() == len(patch.masks)
        union_parts = label_objects(labels > 0)[1]
        touching += len(patch.masks) - union_parts
        table = read_encodings(staged / ("train.csv" if patch.split == "train" else "test_truth.csv"))
        truth = decode(table[patch.id], shape).astype(bool)
        if patch.split == "train":  # no component holds two nuclei, and every nucleus keeps its core
            parts, n_parts = label_objects(truth)
            assert not (truth & ~(labels > 0)).any()
            for part in range(1, n_parts + 1):
                assert len(np.unique(labels[parts == part])) == 1
            assert set(np.unique(labels[truth])) == set(range(1, len(patch.masks) + 1))
        else:  # what is scored: the plain union
            assert np.array_equal(truth, labels > 0)
    assert touching > 0, "the synthetic set must have touching nuclei"


def test_separate_touching_cuts_a_two_pixel_gap() -> None:
    labels = np.zeros((9, 12), np.int32)
    labels[2:7, 1:6] = 1
    labels[2:7, 6:11] = 2  # touching along columns 5 | 6
    labels[0, 0] = 0
    out = separate_touching(labels)
    assert not out[2:7, 5:7].any()
    assert out[2:7, 1:5].all() and out[2:7, 7:11].all()
    assert ndimage.label(out)[1] == 2


def test_staging_is_incremental(tmp_path: Path) -> None:
    data = make_nuclei_dataset(tmp_path / "nuc", n_train=3, n_test=1, size=96, seed=1)
    staged = tmp_path / "staged"
    stage_patches(data, "dsb2018", staged)
    before = _mtimes(staged)

    stage_patches(data, "dsb2018", staged)
    assert _mtimes(staged) == before, "an unchanged data set must not touch a staged file"

    # one image changed: only its TIFF (and the tables whose content changed) are rewritten
    image = data / "train" / "nuc_train001" / "images" / "nuc_train001.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[:10, :10, :3] = 0
    _png(pixels, image)
    future = image.stat().st_mtime_ns + 5 * 10**9
    os.utime(image, ns=(future, future))
    stage_patches(data, "dsb2018", staged)
    after = _mtimes(staged)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"train/nuc_train001.tiff", "truth/nuc_train001.rle"}
    assert np.array_equal(tifffile.imread(staged / "train" / "nuc_train001.tiff"), pixels[..., :3])

    # an image removed from the data set leaves the staged set too
    shutil.rmtree(data / "train" / "nuc_train002")
    stage_patches(data, "dsb2018", staged)
    assert not (staged / "train" / "nuc_train002.tiff").exists()
    assert not (staged / "truth" / "nuc_train002.rle").exists()
    assert "nuc_train002" not in read_encodings(staged / "train.csv")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _png(np.zeros((8, 8, 3), np.uint8), d / "train" / "images" / "a.png"), "without a mask"),
        (lambda d: _png(np.zeros((8, 8), np.uint8), d / "train" / "masks" / "b.png"), "mask without an image"),
        (lambda d: (_png(np.zeros((8, 8, 3), np.uint8), d / "train" / "images" / "c.png"),
                    _png(np.zeros((9, 8), np.uint8), d / "train" / "masks" / "c.png")), "mask is 9 x 8 px"),
        (lambda d: _png(np.zeros((8, 8, 3), np.uint8), d / "test" / "images" / "bad name.png"), "rename it"),
        (lambda d: (_png(np.zeros((8, 8, 3), np.uint8), d / "test" / "images" / "e.png"),
                    (d / "test" / "images" / "e.png").write_bytes(b"not a png")), "cannot read image"),
    ],
)
def test_a_bad_image_is_named_and_left_out_the_others_go_on(tmp_path: Path, make, message: str) -> None:
    data = tmp_path / "p"
    _png(np.full((8, 8, 3), 200, np.uint8), data / "train" / "images" / "good.png")
    _png(np.full((8, 8), 255, np.uint8), data / "train" / "masks" / "good.png")
    make(data)
    warnings: list[str] = []
    staged = stage_patches(data, "patches", tmp_path / "staged", warn=warnings.append)
    assert len(warnings) == 1 and message in warnings[0] and str(data) in warnings[0]
    assert sorted(p.name for p in staged.rglob("*.tiff")) == ["good.tiff"]
    assert list(read_encodings(staged / "train.csv")) == ["good"]


def test_an_image_that_turns_bad_leaves_the_staged_set(tmp_path: Path) -> None:
    data = make_nuclei_dataset(tmp_path / "nuc", n_train=2, n_test=0, size=64, seed=6)
    staged = stage_patches(data, "dsb2018", tmp_path / "staged")
    shutil.rmtree(data / "train" / "nuc_train001" / "masks")
    warnings: list[str] = []
    stage_patches(data, "dsb2018", staged, warn=warnings.append)
    assert any("nuc_train001" in w and "without object masks" in w for w in warnings)
    assert not (staged / "train" / "nuc_train001.tiff").exists()
    assert list(read_encodings(staged / "train.csv")) == ["nuc_train000"]


def test_empty_folder_says_what_layout_it_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no usable images for data_layout dsb2018.*\{split\}/\{id\}/images"):
        find_patches(tmp_path, "dsb2018")


def test_mask_png_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((37, 53), bool)
    mask[5:20, 10:40] = True
    write_mask_png(encode(mask), mask.shape, tmp_path / "m.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")) > 127, mask)


@pytest.mark.slow
def test_workflow_on_a_dsb2018_set_writes_a_mask_per_test_image(tmp_path: Path) -> None:
    make_nuclei_dataset(tmp_path / "data", n_train=4, n_test=2, size=128, seed=2)
    config = {
        "data_dir": "data", "results_dir": "results", "data_layout": "dsb2018",
        "tiles": {"size": 128, "stride": 128, "out_size": 128, "centre_on_glomeruli": False, "workers": 1},
        "model": {"arch": "Unet", "encoder": "resnet18", "input_norm": "invert_dark"},
        "train": {"folds": 2, "epochs": 1, "batch_size": 4, "loss": {"border_bce": 1.0}},
        "filter": {"enabled": False},
        "predict": {"window": 128, "overlap": 0.5, "out_size": 128, "batch_size": 4, "workers": 1, "tta": [],
                    "threshold": 0.5, "min_object_px": 0},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]

    tests = ["nuc_test000", "nuc_test001"]
    for image_id in tests:
        mask = np.asarray(Image.open(tmp_path / "results" / "predictions" / "masks" / f"{image_id}.png"))
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
    submission = pd.read_csv(tmp_path / "results" / "submission.csv")
    assert submission["id"].tolist() == tests
    scores = pd.read_csv(tmp_path / "results" / "evaluation" / "dice.csv")
    assert scores["id"].tolist() == [*tests, "mean"]
    assert len(pd.read_csv(tmp_path / "results" / "evaluation" / "oof.csv")) == 4 + 1  # every train image, out of fold

    # a new test image the next night: only its own jobs (and the tables) run
    make_nuclei_dataset(tmp_path / "more", n_train=0, n_test=3, size=128, seed=9)
    shutil.copytree(tmp_path / "more" / "test" / "nuc_test002", tmp_path / "data" / "test" / "nuc_test002")
    again = snakemake(tmp_path)
    assert again.returncode == 0, again.stderr[-5000:]
    jobs = jobs_run(again.stdout + again.stderr)
    assert jobs["predict"] == 1 and jobs["mask_png"] == 1 and jobs["tissue"] == 1
    assert "train" not in jobs and "tiles" not in jobs
    assert (tmp_path / "results" / "predictions" / "masks" / "nuc_test002.png").exists()


def test_donors_of_the_patch_set_group_its_folds(tmp_path: Path) -> None:
    from pipeline.folds import fold_assignment

    data = make_nuclei_dataset(tmp_path / "nuc", n_train=6, n_test=0, size=64, seed=3)
    ids = [f"nuc_train{i:03d}" for i in range(6)]
    donors = {i: f"donor{k // 2}" for k, i in enumerate(ids)}  # three donors of two images each
    (data / "HuBMAP-20-dataset_information.csv").write_text(
        "image_file,patient_number\n" + "".join(f"{i}.png,{d}\n" for i, d in donors.items())
    )
    staged = stage_patches(data, "dsb2018", tmp_path / "staged")
    folds = fold_assignment(staged, ids, 3, seed=0)
    for a in ids:
        for b in ids:
            if donors[a] == donors[b]:
                assert folds[a] == folds[b]
    assert len(set(folds.values())) == 3


def test_synth_command_writes_a_dsb2018_set_with_dark_field_images(tmp_path: Path) -> None:
    from pipeline.cli import main

    main(["synth", "--layout", "dsb2018", "--out", str(tmp_path / "nuc"), "--n-train", "3", "--n-test", "1",
          "--width", "64", "--seed", "4"])  # fmt: skip
    patches = find_patches(tmp_path / "nuc", "dsb2018")
    assert [p.id for p in patches] == ["nuc_train000", "nuc_train001", "nuc_train002", "nuc_test000"]
    brightness = {p.id: float(read_image(p.image).mean()) for p in patches}
    assert brightness["nuc_train002"] < 100 < brightness["nuc_train000"]  # every third image is dark-field
    assert all(np.asarray(Image.open(p.image)).shape == (64, 64, 4) for p in patches)  # RGBA, as DSB's


def test_mask_png_command_refuses_a_slide_sized_mask(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a slide, not a patch"):
        write_mask_png("1 5", (30000, 37000), tmp_path / "big.png")
    assert not (tmp_path / "big.png").exists()
