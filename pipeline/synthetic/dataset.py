"""A whole synthetic data set in the Kaggle layout: slides, annotations and tables (:func:`make_dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.annotations import polygons_to_rle, write_hubmap_json
from pipeline.atomic import write_csv_atomic
from pipeline.errors import ConfigError
from pipeline.progress import get_logger
from pipeline.synthetic.plan import plan_slide
from pipeline.synthetic.tiff import TILE, PathLike, _write_tiff

log = get_logger(__name__)

RLE_STRIP_BYTES = 32 * 2**20  # mask strip rasterised at a time for train.csv


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
