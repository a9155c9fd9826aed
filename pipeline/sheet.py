"""The slide sheet and the ground-truth check: what is in ``data_dir``, and is it sound.

``slides.csv`` lists every slide with its size and layout so a user sees at a
glance what the run will process; a slide that cannot be opened is listed with
its error instead of stopping the sheet. The truth check compares each
training slide's ``train.csv`` mask with its polygons, straight from the RLE.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.dataset import UNSUPPORTED_NAME, discover_slides, polygons_path, read_encodings, unsupported_slide_files
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

SHEET_COLUMNS = ["id", "split", "path", "height", "width", "levels", "layout", "error"]
CHECK_COLUMNS = ["id", "source", "height", "width", "rle_area", "polygon_area", "dice", "status"]
TRUTH_AGREEMENT = 0.99  # Dice between train.csv and polygons below which a slide is flagged


def write_slide_sheet(data_dir: str | Path, out_csv: str | Path, backend: str = "tifffile") -> pd.DataFrame:
    """Write ``slides.csv``: id, split, path, height, width, levels, layout, error.

    Files with an unsupported name (not a valid id) are listed too, with the reason in ``error``.
    """
    from pipeline.slides import open_slide

    rows = []
    for slide in discover_slides(data_dir):
        row = {"id": slide.id, "split": slide.split, "path": str(slide.path), "error": ""}
        try:
            with open_slide(slide.path, backend=backend) as reader:
                row.update(
                    height=reader.shape[0],
                    width=reader.shape[1],
                    levels=len(reader.level_shapes),
                    layout=getattr(reader, "layout", ""),
                )
        except PipelineError as err:
            log.warning("%s", err)
            row["error"] = str(err)
        rows.append(row)
    for path in unsupported_slide_files(data_dir):  # listed, never silently dropped
        error = f"{path}: {UNSUPPORTED_NAME}"
        log.warning("%s", error)
        rows.append({"id": path.name[: -len(path.suffix)], "split": path.parent.name, "path": str(path),
                     "error": error})
    sheet = pd.DataFrame(rows, columns=SHEET_COLUMNS)
    with atomic_path(out_csv) as tmp:
        sheet.to_csv(tmp, index=False)
    log.info("%d slides (%d unreadable) -> %s", len(sheet), int((sheet["error"] != "").sum()), out_csv)
    return sheet


def check_truth(data_dir: str | Path, out_csv: str | Path, backend: str = "tifffile") -> pd.DataFrame:
    """Validate every train.csv RLE against its slide and compare it with the polygons.

    Raises the RLEError of the first malformed string (naming train.csv and the id);
    a disagreement with the polygons is reported in the table and logged, not fatal.
    """
    from pipeline.annotations import polygons_to_rle, read_polygons
    from pipeline.metrics import dice_rle
    from pipeline.rle import area, parse
    from pipeline.slides import open_slide

    data_dir = Path(data_dir)
    encodings = read_encodings(data_dir / "train.csv")
    rows = []
    for slide in discover_slides(data_dir):
        if slide.split != "train":
            continue
        with open_slide(slide.path, backend=backend) as reader:
            shape = reader.shape
        rle = encodings.get(slide.id)
        poly_path = polygons_path(data_dir, slide.id)
        row = {"id": slide.id, "height": shape[0], "width": shape[1]}
        if rle is None and poly_path is None:
            rows.append({**row, "source": "none", "status": "no truth"})
            log.warning("%s: no train.csv row and no polygons: no truth, so the slide is left out of training",
                        slide.path)
            continue
        polygon_rle = polygons_to_rle(read_polygons(poly_path), shape) if poly_path else None
        if rle is not None:
            runs = parse(rle, shape, source=f"{data_dir / 'train.csv'} (id {slide.id})")
            row.update(source="train.csv", rle_area=area(runs))
        else:
            row.update(source="polygons")
        if polygon_rle is not None:
            row["polygon_area"] = area(polygon_rle)
        if rle is not None and polygon_rle is not None:
            dice = dice_rle(rle, polygon_rle, shape)
            row["dice"] = round(dice, 6)
            row["status"] = "ok" if dice >= TRUTH_AGREEMENT else "disagree"
            if dice < TRUTH_AGREEMENT:
                log.warning("%s: train.csv and polygons disagree (Dice %.4f)", slide.path, dice)
        else:
            row["status"] = "ok"
        rows.append(row)
    table = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
