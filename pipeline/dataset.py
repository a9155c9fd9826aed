"""The data directory in the Kaggle layout: which slides exist and what truth they have.

Layout (see ARCHITECTURE.md): ``train/{id}.tiff`` (+ ``{id}.json`` polygons),
``train.csv`` (``id,encoding``), ``test/{id}.tiff``, optional
``sample_submission.csv`` (fixes the order of ids) and ``test_truth.csv``
(hidden truth of test slides, when known). Discovery only lists files, so the
Snakefile can call it on every run without opening a slide.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError

SPLITS = ("train", "test")
SLIDE_SUFFIXES = (".tiff", ".tif", ".svs")
SLIDE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
TRAIN_CSV = "train.csv"
TEST_TRUTH_CSV = "test_truth.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"

csv.field_size_limit(2**31 - 1)  # Kaggle RLE strings run to megabytes


@dataclass(frozen=True)
class SlideFile:
    """One slide found in ``data_dir``."""

    id: str
    split: str
    path: Path


def _slide_id(path: Path) -> str | None:
    """Slide id of ``path``, or None for files that are not slides (masks, sidecars)."""
    if path.suffix.lower() not in SLIDE_SUFFIXES or path.name.startswith("."):
        return None
    stem = path.name[: -len(path.suffix)]
    return stem if SLIDE_ID.match(stem) else None


def discover_slides(data_dir: str | Path) -> list[SlideFile]:
    """All slides under ``data_dir/{train,test}``, sorted by split then id.

    Raises DataError if the directory is missing or an id appears twice.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data directory does not exist")
    found: dict[str, SlideFile] = {}
    for split in SPLITS:
        folder = data_dir / split
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            slide_id = _slide_id(path)
            if slide_id is None:
                continue
            if slide_id in found:
                raise DataError(path, f"slide id {slide_id!r} also at {found[slide_id].path}")
            found[slide_id] = SlideFile(slide_id, split, path)
    return sorted(found.values(), key=lambda s: (SPLITS.index(s.split), s.id))


def read_encodings(csv_path: str | Path) -> dict[str, str]:
    """``id -> RLE`` from a Kaggle ``id,encoding`` (or ``id,predicted``) table; {} if absent."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return {}
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(csv_path, f"cannot read table: {err}") from err
    column = next((c for c in ("encoding", "predicted") if c in table.columns), None)
    if "id" not in table.columns or column is None:
        raise DataError(csv_path, f"expected columns id,encoding; found {','.join(table.columns)}")
    duplicated = table["id"][table["id"].duplicated()].tolist()
    if duplicated:
        raise DataError(csv_path, f"id(s) listed twice: {', '.join(duplicated[:5])}")
    return dict(zip(table["id"], table[column].str.strip()))


def polygons_path(data_dir: str | Path, slide_id: str) -> Path | None:
    """The glomerulus polygon JSON of a training slide, if there is one."""
    path = Path(data_dir) / "train" / f"{slide_id}.json"
    return path if path.exists() else None


def truth_rle(data_dir: str | Path, slide_id: str) -> str | None:
    """A slide's ground-truth RLE from ``train.csv`` or ``test_truth.csv``; None if unknown."""
    data_dir = Path(data_dir)
    for table in (TRAIN_CSV, TEST_TRUTH_CSV):
        encodings = read_encodings(data_dir / table)
        if slide_id in encodings:
            return encodings[slide_id]
    return None


def submission_order(data_dir: str | Path, slide_ids: list[str]) -> list[str]:
    """Ids in the order of ``sample_submission.csv`` (when present), else sorted."""
    sample = Path(data_dir) / SAMPLE_SUBMISSION_CSV
    if not sample.exists():
        return sorted(slide_ids)
    try:
        order = pd.read_csv(sample, dtype=str, keep_default_na=False)["id"].tolist()
    except (OSError, ValueError, KeyError) as err:
        raise DataError(sample, f"cannot read the id column: {err}") from err
    rest = sorted(set(slide_ids) - set(order))
    return order + rest
