"""Benchmark on real labels: the AIDPATH glomerulus tiles as mosaic slides, through the real workflow.

Builds a small data set in the Kaggle layout from ``../shared/data/aidpath-glomeruli/`` (24
PAS-stained human kidney tiles, 1024 x 1024 PNG, masks RGB with red = glomerulus, labelled by
pathologists), runs the whole Snakemake workflow on it with a chosen config, and prints the
Dice per test slide (the workflow's ``evaluation/dice.csv``) and per test *tile* (the mosaics
cut back into their tiles), with overlays of the worst tiles in ``OUT/worst/``.

The data set (:func:`build_dataset`), decisions written down:

* **Split** (fixed, :data:`LAYOUT`): 16 tiles in 4 train mosaics, 8 tiles in 2 test mosaics,
  each mosaic 2 x 2 tiles = 2048 x 2048 px. The 24 tiles are not independent: they are the
  tissue-bearing 1024 px tiles of a few biopsies, and 19 pairs of them are true neighbours
  (the seam between them continues the tissue: mean |difference| over tissue pixels of the
  two edge rows 9.7-15.6 grey levels, like two adjacent rows inside a tile (14.2); every
  other pair >= 35). Glomeruli cut by a tile edge continue in the neighbour (10102 | 10103
  hold the two halves of one). So the split is by connected piece of tissue, never through
  one: no glomerulus has a part in train and a part in test. Tiles are placed at their true
  positions wherever the pieces allow (16 of the 24 mosaic seams are real; ``split.csv`` has
  the layout); ``aidp_test0`` is a real contiguous 2 x 2 block, with a glomerulus that spans
  all four tiles at its centre.
* **Gap**: none, tiles abut. Real neighbours must abut to continue the tissue; the other
  seams are artificial (tissue against unrelated tissue or glass) -- one of the "border
  effects" to look for.
* **Scale**: full resolution, no resizing. Whole glomeruli in these masks are 300-500 px
  across (e.g. 10150: 495 x 460, 10183: 370 x 402), i.e. 150-250 um at 0.5 um/px: Aperio's
  "20x" *is* ~0.5 um/px, the same scale as the HuBMAP slides, so the pipeline's windows
  (1536 -> 512, demo 768 -> 256) see glomeruli at the size they were designed for.
* **Codec**: lossless Deflate (zlib, horizontal predictor), tiled 512 x 512, RGB,
  0.5 um/px in the resolution tags. The sources are lossless PNGs and the benchmark should
  measure the model, not JPEG artefacts a second encoder adds; at 2048^2 a slide is 5-7 MB.
* ``train.csv`` / ``test_truth.csv``: Kaggle RLE of the stitched binary masks (red > 127);
  ``train/{id}.json``: the same masks as pixel-edge polygons (exact: rasterising them gives
  the RLE back, so the workflow's truth check reads Dice 1.0).

    .venv/bin/python bench/real.py                        # demo config, 2 cores, OUT=/tmp/real-bench
    .venv/bin/python bench/real.py --config bench/real-cpu.yaml --out /tmp/real-bench-cpu  # ~40 min CPU
    .venv/bin/python bench/real.py --config config/config.yaml --out /tmp/real-bench-full  # GPU
    .venv/bin/python bench/real.py --build-only --out /tmp/aidp
    .venv/bin/python bench/real.py --patches --config bench/real-cpu.yaml --out /tmp/real-bench-patches  # tiles as a patch set

Data: Bueno G., Gonzalez-Lopez L., Garcia-Rojo M., Laurinavicius A. (2020), "Data for
glomeruli characterization in histopathological images", Mendeley Data V3,
doi:10.17632/k7nvtgn2x6.3, CC BY 4.0 (AIDPATH). Attribution is required when results on
them are published.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.annotations import mask_to_polygons, write_hubmap_json  # noqa: E402
from pipeline.atomic import atomic_path, write_csv_atomic, write_text_atomic  # noqa: E402
from pipeline.rle import encode  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "aidpath-glomeruli"
TILE_PX = 1024
SLIDE_TILE = 512  # TIFF tile side
UM_PER_PX = 0.5

#: slide id -> (split, 2 x 2 tile names, row-major). Real neighbour seams marked in comments
#: ("|" left-right, "/" top-bottom); every other seam is artificial.
LAYOUT: dict[str, tuple[str, tuple[tuple[str, str], tuple[str, str]]]] = {
    # 10014|10025, 10063|10064, 10014/10063, 10025/10064: a real 2 x 2 block
    "aidp_train0": ("train", (("10014", "10025"), ("10063", "10064"))),
    # 10133|10003 (one glomerulus across the seam), 10102|10103 (one glomerulus across it)
    "aidp_train1": ("train", (("10133", "10003"), ("10102", "10103"))),
    # 10183|10184, 10183/10191 (one glomerulus across it); 10172 elsewhere in that biopsy
    "aidp_train2": ("train", (("10183", "10184"), ("10191", "10172"))),
    # 10149|10150, 10177|10179 (one glomerulus across it)
    "aidp_train3": ("train", (("10149", "10150"), ("10177", "10179"))),
    # a real 2 x 2 block: one glomerulus spans all four tiles at the centre
    "aidp_test0": ("test", (("10164", "10165"), ("10169", "10170"))),
    # 10210/10215 and 10220/10224 (one glomerulus across each); the middle seam is artificial
    "aidp_test1": ("test", (("10210", "10220"), ("10215", "10224"))),
}

SPLIT_COLUMNS = ["tile", "split", "slide", "row", "col", "y0", "x0", "glomerulus_px"]
ATTRIBUTION = (
    "AIDPATH glomeruli: Bueno G., Gonzalez-Lopez L., Garcia-Rojo M., Laurinavicius A. (2020), "
    '"Data for glomeruli characterization in histopathological images", Mendeley Data V3, '
    "doi:10.17632/k7nvtgn2x6.3, CC BY 4.0. Tiles laid out as mosaic slides by bench/real.py."
)


# ----------------------------------------------------------------------------- data set


def read_tile(src_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image, bool mask = red channel > 127) of one source tile, checked."""
    from PIL import Image

    paths = [src_dir / "images" / f"{name}.png", src_dir / "masks" / f"{name}.png"]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tile {name} of the layout is missing")
    with Image.open(paths[0]) as im:
        image = np.asarray(im.convert("RGB"))
    with Image.open(paths[1]) as im:
        mask = np.asarray(im.convert("RGB"))[..., 0] > 127
    for path, shape in zip(paths, (image.shape[:2], mask.shape)):
        if shape != (TILE_PX, TILE_PX):
            raise ValueError(f"{path}: expected {TILE_PX} x {TILE_PX} px, got {shape[0]} x {shape[1]}")
    return image, mask


def check_layout(layout: dict[str, Any], src_dir: Path | None = None) -> None:
    """Every tile once, 2 x 2 mosaics, ids the workflow accepts; all source tiles used."""
    from pipeline.dataset import SLIDE_ID

    names = [n for _, grid in layout.values() for row in grid for n in row]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"tiles used more than once: {', '.join(dupes)}")
    for slide_id, (split, grid) in layout.items():
        if not SLIDE_ID.match(slide_id) or split not in ("train", "test"):
            raise ValueError(f"bad slide {slide_id!r} / split {split!r}")
        if len({len(r) for r in grid}) != 1:
            raise ValueError(f"{slide_id}: ragged tile grid")
    if src_dir is not None:
        available = sorted(p.stem for p in (src_dir / "images").glob("*.png"))
        unused = sorted(set(available) - set(names))
        if unused:
            raise ValueError(f"{src_dir}: tiles not in the layout: {', '.join(unused)}")


def write_slide(path: Path, image: np.ndarray) -> None:
    """Tiled (512 px), lossless Deflate RGB TIFF with 0.5 um/px resolution tags; atomic."""
    import tifffile

    per_cm = 1e4 / UM_PER_PX
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            image,
            photometric="rgb",
            tile=(SLIDE_TILE, SLIDE_TILE),
            compression="zlib",
            compressionargs={"level": 6},
            predictor=True,
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
            metadata=None,
        )


def stitch(src_dir: Path, grid: tuple[tuple[str, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic image (uint8 RGB) and mask (bool) of a grid of tile names (tiles abut)."""
    rows, cols = len(grid), len(grid[0])
    image = np.empty((rows * TILE_PX, cols * TILE_PX, 3), np.uint8)
    mask = np.empty((rows * TILE_PX, cols * TILE_PX), bool)
    for r, row in enumerate(grid):
        for c, name in enumerate(row):
            tile_image, tile_mask = read_tile(src_dir, name)
            window = np.s_[r * TILE_PX : (r + 1) * TILE_PX, c * TILE_PX : (c + 1) * TILE_PX]
            image[window] = tile_image
            mask[window] = tile_mask
    return image, mask


def build_dataset(
    src_dir: str | os.PathLike[str] = SOURCE,
    out_dir: str | os.PathLike[str] = "/tmp/real-bench/data",
    layout: dict[str, tuple[str, tuple[tuple[str, str], tuple[str, str]]]] | None = None,
) -> Path:
    """Write the mosaic data set in the Kaggle layout under ``out_dir``; return it.

    ``train/{id}.tiff`` + ``train/{id}.json``, ``test/{id}.tiff``, ``train.csv``,
    ``test_truth.csv``, ``sample_submission.csv``, ``HuBMAP-20-dataset_information.csv``,
    ``SOURCE.txt`` and ``split.csv`` (tile -> split, slide, row, col, y0, x0, glomerulus px),
    written last: its presence means the set is complete. Slides of other names already in
    ``train/`` or ``test/`` are an error (they would join the workflow's run).
    """
    src, out = Path(src_dir), Path(out_dir)
    layout = LAYOUT if layout is None else layout
    check_layout(layout, src if layout is LAYOUT else None)
    stale = sorted(
        str(p)
        for split in ("train", "test")
        for p in (out / split).glob("*.tif*")
        if p.stem not in layout or layout[p.stem][0] != split
    )
    if stale:
        raise FileExistsError(f"{out}: slides not in the layout would join the run: {', '.join(stale)}")
    truth: dict[str, list[list[str]]] = {"train": [], "test": []}
    split_rows: list[list[Any]] = []
    info_rows: list[list[Any]] = []
    for slide_id, (split, grid) in layout.items():
        image, mask = stitch(src, grid)
        height, width = mask.shape
        write_slide(out / split / f"{slide_id}.tiff", image)
        truth[split].append([slide_id, encode(mask)])
        if split == "train":
            polygons = mask_to_polygons(mask, simplify_tolerance=0.0)  # pixel edges: exact
            write_hubmap_json(polygons, out / "train" / f"{slide_id}.json", name="glomerulus", decimals=0)
        for r, row in enumerate(grid):
            for c, name in enumerate(row):
                y0, x0 = r * TILE_PX, c * TILE_PX
                px = int(np.count_nonzero(mask[y0 : y0 + TILE_PX, x0 : x0 + TILE_PX]))
                split_rows.append([name, split, slide_id, r, c, y0, x0, px])
        info_rows.append(
            [f"{slide_id}.tiff", width, height, f"{slide_id}.json" if split == "train" else "", "PAS", UM_PER_PX]
        )
    write_csv_atomic(out / "train.csv", ["id", "encoding"], truth["train"])
    write_csv_atomic(out / "test_truth.csv", ["id", "encoding"], truth["test"])
    write_csv_atomic(out / "sample_submission.csv", ["id", "predicted"], [[i, ""] for i, _ in truth["test"]])
    write_csv_atomic(
        out / "HuBMAP-20-dataset_information.csv",
        ["image_file", "width_pixels", "height_pixels", "glomerulus_segmentation_file", "stain", "um_per_px"],
        info_rows,
    )
    write_text_atomic(out / "SOURCE.txt", ATTRIBUTION + "\n")
    write_csv_atomic(out / "split.csv", SPLIT_COLUMNS, sorted(split_rows, key=lambda r: (r[1] != "train", r[2], r[3], r[4])))
    return out


def build_patch_dataset(src_dir: Path = SOURCE, out_dir: Path = Path("/tmp/real-bench-patches/data")) -> Path:
    """The same split as :data:`LAYOUT`, as a ``data_layout: patches`` folder: one image per tile.

    ``{split}/images/{tile}.png`` and ``{split}/masks/{tile}.png`` are links to the source
    files (never copies), so the workflow sees each 1024 px tile on its own, with no mosaic seams.
    ``HuBMAP-20-dataset_information.csv`` gives each tile its mosaic as ``patient_number``, so
    folds keep neighbouring tiles together as the mosaic run does.
    """
    out = Path(out_dir)
    check_layout(LAYOUT, src_dir)
    for split, grid in LAYOUT.values():
        for name in (n for row in grid for n in row):
            for kind in ("images", "masks"):
                link = out / split / kind / f"{name}.png"
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to((Path(src_dir) / kind / f"{name}.png").resolve())
    write_text_atomic(out / "SOURCE.txt", ATTRIBUTION + "\n")
    # the tiles of one mosaic are neighbours in one biopsy (a glomerulus may span two): one fold group
    write_csv_atomic(
        out / "HuBMAP-20-dataset_information.csv", ["image_file", "patient_number"],
        [[f"{name}.png", slide_id] for slide_id, (_, grid) in LAYOUT.items() for row in grid for name in row],
    )  # fmt: skip
    return out


def read_split(data_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``split.csv`` with the integer columns as ints."""
    with open(data_dir / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("row", "col", "y0", "x0", "glomerulus_px"):
            row[key] = int(row[key])
    return rows


# ----------------------------------------------------------------------------- the run


def write_config(config_in: Path, workdir: Path, layout: str = "kaggle") -> Path:
    """``workdir/config.yaml``: the chosen config with data_dir / results_dir inside workdir."""
    import yaml

    config = yaml.safe_load(config_in.read_text()) or {}
    config["data_dir"] = str(workdir / "data")
    config["data_layout"] = layout
    config["results_dir"] = str(workdir / "results")
    path = workdir / "config.yaml"
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def run_workflow(workdir: Path, config: Path, cores: str) -> int:
    """Run the repository's workflow in ``workdir``; output to the terminal and to a log."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(config), "--cores", str(cores),
        "--rerun-incomplete",  # a killed benchmark resumes (train from its last.pt) instead of stopping
    ]  # fmt: skip
    log_path = workdir / "snakemake.log"
    print(f"$ {' '.join(command)}\n  (log: {log_path})", flush=True)
    with open(log_path, "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if any(k in line for k in ("rule ", "Finished job", "Error", "error", "steps (")):
                print("  " + line.rstrip(), flush=True)
        return proc.wait()


def stage_times(results: Path) -> dict[str, float]:
    """Rule -> total seconds over its jobs, from the workflow's benchmark files."""
    import pandas as pd

    times: dict[str, float] = {}
    for tsv in sorted((results / "benchmarks").glob("*/*.tsv")):
        seconds = float(pd.read_csv(tsv, sep="\t")["s"].sum())
        times[tsv.parent.name] = times.get(tsv.parent.name, 0.0) + seconds
    return times


def _objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3), bool))


def tile_scores(pred: np.ndarray, truth: np.ndarray, edge_px: int = 64, min_object_px: int = 2000) -> dict[str, Any]:
    """Dice and error break-down of one tile (bool masks).

    ``missed``: truth objects (8-connected, within the tile) with < 10 % of their pixels
    predicted; ``extra``: predicted objects of >= ``min_object_px`` px with < 10 % on truth
    (false detections, or glomeruli nobody labelled); ``edge_err``: share of the error
    pixels (FP + FN) within ``edge_px`` of the tile's border.
    """
    from pipeline.metrics import dice

    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    labels, n_truth = _objects(truth)
    covered = np.bincount(labels[pred], minlength=n_truth + 1)[1:]
    sizes = np.bincount(labels.ravel(), minlength=n_truth + 1)[1:]
    missed = int(np.count_nonzero(covered < 0.1 * sizes))
    plabels, n_pred = _objects(pred)
    psizes = np.bincount(plabels.ravel(), minlength=n_pred + 1)[1:]
    on_truth = np.bincount(plabels[truth], minlength=n_pred + 1)[1:]
    extra_mask = (psizes >= min_object_px) & (on_truth < 0.1 * psizes)
    border = np.ones(pred.shape, bool)
    border[edge_px:-edge_px, edge_px:-edge_px] = False
    err = pred ^ truth
    n_err = int(np.count_nonzero(err))
    return {
        "dice": dice(pred, truth),
        "pred_px": tp + fp,
        "truth_px": tp + fn,
        "fp_px": fp,
        "fn_px": fn,
        "truth_objects": n_truth,
        "missed": missed,
        "extra": int(np.count_nonzero(extra_mask)),
        "extra_px": int(psizes[extra_mask].sum()),
        "edge_err": (np.count_nonzero(err & border) / n_err) if n_err else 0.0,
    }


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, box: tuple[int, int, int, int], title: str) -> np.ndarray:
    """Three panels of a crop: image | truth (yellow) and prediction (cyan) outlines | errors.

    Errors: green = both, red = truth only (missed), blue = prediction only. ``box`` =
    (y0, x0, y1, x1) of the tile inside the crop, drawn dashed black and white on the middle panel.
    """
    from PIL import Image, ImageDraw

    from pipeline.report import PRED_COLOUR, TRUTH_COLOUR, outline

    outlined = image.copy()
    outlined[outline(truth, 4)] = TRUTH_COLOUR
    outlined[outline(pred, 4)] = PRED_COLOUR
    y0, x0, y1, x1 = box
    dash = np.where(((np.arange(max(image.shape)) // 16) % 2 == 0)[:, None], 0, 255).astype(np.uint8)
    for y in (y0, y0 + 1, y0 + 2, y1 - 3, y1 - 2, y1 - 1):
        if 0 <= y < image.shape[0]:
            outlined[y, x0:x1] = dash[: x1 - x0]
    for x in (x0, x0 + 1, x0 + 2, x1 - 3, x1 - 2, x1 - 1):
        if 0 <= x < image.shape[1]:
            outlined[y0:y1, x] = dash[: y1 - y0]
    errors = (image * 0.45 + 140).astype(np.uint8)
    errors[pred & truth] = (40, 170, 60)
    errors[truth & ~pred] = (220, 40, 40)
    errors[pred & ~truth] = (40, 90, 230)
    panels = np.concatenate([image, np.full((image.shape[0], 8, 3), 255, np.uint8), outlined,
                             np.full((image.shape[0], 8, 3), 255, np.uint8), errors], axis=1)  # fmt: skip
    half = Image.fromarray(panels).resize((panels.shape[1] // 2, panels.shape[0] // 2), Image.Resampling.BOX)
    canvas = Image.new("RGB", (half.width, half.height + 22), (40, 40, 40))
    canvas.paste(half, (0, 22))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 5), title, fill=(255, 255, 255))
    legend = [("truth", TRUTH_COLOUR), ("prediction", PRED_COLOUR), ("both", (40, 170, 60)),
              ("missed", (220, 40, 40)), ("extra", (40, 90, 230))]  # fmt: skip
    x = half.width - 330
    for text, colour in legend:
        draw.rectangle([x, 7, x + 9, 16], fill=colour)
        draw.text((x + 13, 5), text, fill=colour)
        x += 13 + 7 * len(text) + 10
    return np.asarray(canvas)


def per_tile(workdir: Path, n_worst: int, context: int = 128) -> list[dict[str, Any]]:
    """Per-tile scores of the test mosaics (from submission.csv vs test_truth.csv); overlays of the worst."""
    import tifffile
    from PIL import Image

    from pipeline.dataset import read_encodings
    from pipeline.rle import decode

    data, results = workdir / "data", workdir / "results"
    predicted = read_encodings(results / "submission.csv")
    truth_rles = read_encodings(data / "test_truth.csv")
    split = [r for r in read_split(data) if r["split"] == "test"]
    rows: list[dict[str, Any]] = []
    mosaics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for slide_id in sorted({r["slide"] for r in split}):
        shape = tifffile.TiffFile(data / "test" / f"{slide_id}.tiff").pages[0].shape[:2]
        mosaics[slide_id] = (
            decode(predicted.get(slide_id, ""), shape).astype(bool),
            decode(truth_rles[slide_id], shape).astype(bool),
        )
        for tile in (r for r in split if r["slide"] == slide_id):
            window = np.s_[tile["y0"] : tile["y0"] + TILE_PX, tile["x0"] : tile["x0"] + TILE_PX]
            pred, truth = (m[window] for m in mosaics[slide_id])
            rows.append({**tile, **tile_scores(pred, truth)})
    worst = sorted(rows, key=lambda r: (r["dice"], -r["truth_px"]))[:n_worst]
    out = workdir / "worst"
    for path in out.glob("*.png"):
        path.unlink()
    for rank, tile in enumerate(worst, 1):
        pred_m, truth_m = mosaics[tile["slide"]]
        image = tifffile.imread(data / "test" / f"{tile['slide']}.tiff")
        h, w = truth_m.shape
        ya, xa = max(tile["y0"] - context, 0), max(tile["x0"] - context, 0)
        yb, xb = min(tile["y0"] + TILE_PX + context, h), min(tile["x0"] + TILE_PX + context, w)
        crop = np.s_[ya:yb, xa:xb]
        box = (tile["y0"] - ya, tile["x0"] - xa, tile["y0"] - ya + TILE_PX, tile["x0"] - xa + TILE_PX)
        title = (
            f"#{rank} tile {tile['tile']} ({tile['slide']} r{tile['row']} c{tile['col']}): Dice {tile['dice']:.3f}, "
            f"pred {tile['pred_px']} px, truth {tile['truth_px']} px, {context} px context"
        )
        picture = overlay(image[crop], truth_m[crop], pred_m[crop], box, title)
        with atomic_path(out / f"{rank}_{tile['tile']}.png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")
        tile["overlay"] = str(out / f"{rank}_{tile['tile']}.png")
    return rows


def print_oof(results: Path, test_mean: float) -> None:
    """The whole-slide out-of-fold Dice of the training mosaics, beside the test Dice."""
    import json

    import pandas as pd

    oof_csv = results / "evaluation" / "oof.csv"
    if not oof_csv.exists():
        print(f"\n(no {oof_csv}: train.folds 1 validates nothing)")
        return
    oof = pd.read_csv(oof_csv, dtype={"slide": str})
    print(f"\nOut-of-fold Dice per training slide ({oof_csv}; each by the fold that never trained on it):")
    print(f"  {'slide':<12} {'fold':>4} {'Dice':>7} {'predicted px':>13} {'truth px':>10}")
    for row in oof.iloc[:-1].itertuples():
        print(f"  {row.slide:<12} {int(row.fold):>4} {row.dice:>7.4f} {int(row.predicted_area):>13,} "
              f"{int(row.truth_area):>10,}")
    oof_mean = float(oof["dice"].iloc[-1])
    choice = json.loads((results / "evaluation" / "threshold.json").read_text())
    print(f"  mean out-of-fold Dice {oof_mean:.4f} vs mean test Dice {test_mean:.4f} "
          f"(difference {test_mean - oof_mean:+.4f}); threshold {choice['threshold']:.2f} "
          f"({choice['threshold_source']})")


def print_test_dice(results: Path) -> float:
    """The workflow's Dice per test slide (or patch); returns the mean."""
    import pandas as pd

    dice_csv = results / "evaluation" / "dice.csv"
    table = pd.read_csv(dice_csv, dtype={"id": str})
    print(f"\nDice per test slide ({dice_csv}):")
    print(f"  {'slide':<12} {'Dice':>7} {'predicted px':>13} {'truth px':>10}")
    for row in table.itertuples():
        pred = "" if pd.isna(row.predicted_area) else f"{int(row.predicted_area):,}"
        truth = "" if pd.isna(row.truth_area) else f"{int(row.truth_area):,}"
        print(f"  {row.id:<12} {row.dice:>7.4f} {pred:>13} {truth:>10}")
    return float(table["dice"].iloc[-1])


def report(workdir: Path, n_worst: int) -> None:
    import pandas as pd

    results = workdir / "results"
    print_oof(results, print_test_dice(results))
    rows = per_tile(workdir, n_worst)
    print("\nDice per test tile (the mosaics cut back into their 1024 px tiles):")
    header = (f"  {'tile':<6} {'slide':<11} {'r,c':<4} {'Dice':>6} {'pred px':>8} {'truth px':>8} "
              f"{'FP px':>7} {'FN px':>7} {'objs':>4} {'missed':>6} {'extra':>5} {'err@edge':>8}")  # fmt: skip
    print(header)
    for r in rows:
        print(
            f"  {r['tile']:<6} {r['slide']:<11} {r['row']},{r['col']:<2} {r['dice']:>6.3f} {r['pred_px']:>8} "
            f"{r['truth_px']:>8} {r['fp_px']:>7} {r['fn_px']:>7} {r['truth_objects']:>4} {r['missed']:>6} "
            f"{r['extra']:>5} {r['edge_err']:>8.0%}"
        )
    print(f"  mean per-tile Dice {np.mean([r['dice'] for r in rows]):.4f} over {len(rows)} tiles")
    pd.DataFrame(rows).to_csv(workdir / "tiles.csv", index=False)
    print(f"  (table: {workdir / 'tiles.csv'}; missed = truth objects < 10 % predicted, extra = predicted"
          " objects >= 2000 px < 10 % on truth, err@edge = error px within 64 px of the tile border)")  # fmt: skip
    print("\nworst tiles (overlays: image | truth yellow, prediction cyan | errors):")
    for r in sorted(rows, key=lambda r: (r["dice"], -r["truth_px"]))[:n_worst]:
        print(f"  {r['tile']}: Dice {r['dice']:.3f} -> {r.get('overlay')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/real-bench"), help="working directory (data/, results/, config.yaml, worst/)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "demo.yaml", help="workflow config; data_dir and results_dir are replaced")
    parser.add_argument("--cores", default="2", help="snakemake --cores (a number or 'all')")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the aidpath-glomeruli folder (images/, masks/)")
    parser.add_argument("--build-only", action="store_true", help="write the data set and stop")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the data set even if it is complete")
    parser.add_argument("--worst", type=int, default=3, help="overlays of this many worst test tiles")
    parser.add_argument("--patches", action="store_true",
                        help="the same split as separate 1024 px images (data_layout: patches), no mosaics")
    args = parser.parse_args(argv)
    if args.patches:
        return main_patches(args)

    start = time.perf_counter()
    workdir = args.out.resolve()
    data = workdir / "data"
    if args.rebuild or not (data / "split.csv").exists():
        t0 = time.perf_counter()
        build_dataset(args.source, data)
        print(f"data set written to {data} in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"data set already complete in {data} (--rebuild to rewrite it)")
    split = read_split(data)
    for name in ("train", "test"):
        tiles = [r for r in split if r["split"] == name]
        slides = sorted({r["slide"] for r in tiles})
        print(f"  {name}: {len(tiles)} tiles in {len(slides)} slides ({', '.join(slides)})")
    print(f"  {ATTRIBUTION}")
    if args.build_only:
        return 0

    config = write_config(args.config.resolve(), workdir)
    print(f"\nconfig: {args.config} -> {config}")
    t0 = time.perf_counter()
    rc = run_workflow(workdir, config, args.cores)
    workflow_s = time.perf_counter() - t0
    if rc != 0:
        print(f"workflow failed (exit {rc}) after {workflow_s:.0f} s; see {workdir / 'snakemake.log'}", file=sys.stderr)
        return rc
    report(workdir, args.worst)
    times = stage_times(workdir / "results")
    if times:
        print("\nworkflow time per rule (sum over its jobs, from results/benchmarks): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(times.items(), key=lambda kv: -kv[1])))  # fmt: skip
    print(f"\nwall time: workflow {workflow_s:.0f} s, total {time.perf_counter() - start:.0f} s "
          f"(config {args.config}, --cores {args.cores})")  # fmt: skip
    return 0


def main_patches(args: argparse.Namespace) -> int:
    """``--patches``: the workflow on the tiles as a patch set; Dice per test image and out of fold."""
    start = time.perf_counter()
    workdir = args.out.resolve()
    data = build_patch_dataset(args.source, workdir / "data")
    print(f"patch set (links to {args.source}) in {data}\n  {ATTRIBUTION}")
    config = write_config(args.config.resolve(), workdir, layout="patches")
    rc = run_workflow(workdir, config, args.cores)
    if rc != 0:
        print(f"workflow failed (exit {rc}); see {workdir / 'snakemake.log'}", file=sys.stderr)
        return rc
    results = workdir / "results"
    print_oof(results, print_test_dice(results))
    times = stage_times(results)
    print("\nworkflow time per rule: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(times.items(), key=lambda kv: -kv[1])))
    print(f"\nwall time {time.perf_counter() - start:.0f} s (config {args.config}, --cores {args.cores})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
