"""The data directory in the Kaggle layout: which slides exist and what truth they have.

Layout (see ARCHITECTURE.md): ``train/{id}.tiff`` (+ ``{id}.json`` polygons),
``train.csv`` (``id,encoding``), ``test/{id}.tiff``, optional
``sample_submission.csv`` (fixes the order of ids) and ``test_truth.csv``
(hidden truth of test slides, when known). Discovery only lists files, so the
Snakefile can call it on every run without opening a slide; :func:`input_problems`
and :func:`planned_slides` are the checks it makes there, so a bad input is reported
at every run instead of vanishing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError
from pipeline.progress import get_logger

log = get_logger(__name__)

SPLITS = ("train", "test")
SLIDE_SUFFIXES = (".tiff", ".tif", ".svs")
SLIDE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
SLIDE_ID_RULE = "slide ids must match [A-Za-z0-9_.-]+ (ASCII letters, digits, '_', '.', '-')"
UNSUPPORTED_NAME = f"not processed: unsupported file name: {SLIDE_ID_RULE}; rename the file"
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


def _slide_stem(path: Path) -> str | None:
    """The name of a slide file without its suffix; None for files that are not slides (masks, sidecars)."""
    if path.suffix.lower() not in SLIDE_SUFFIXES or path.name.startswith("."):
        return None
    return path.name[: -len(path.suffix)]


def _slide_id(path: Path) -> str | None:
    """Slide id of ``path``, or None for non-slides and for names :data:`SLIDE_ID` refuses."""
    stem = _slide_stem(path)
    return stem if stem is not None and SLIDE_ID.match(stem) else None


def unsupported_slide_files(data_dir: str | Path) -> list[Path]:
    """Slide files under ``data_dir/{train,test}`` whose name is not a valid id (spaces, accents...).

    Discovery skips them (an id becomes a path and a Snakemake wildcard), so every
    caller that lists slides reports these instead of letting them vanish.
    """
    out = []
    for split in SPLITS:
        folder = Path(data_dir) / split
        if folder.is_dir():
            out += [p for p in sorted(folder.iterdir()) if _slide_stem(p) is not None and _slide_id(p) is None]
    return out


def check_id(slide_id: str, source: str | Path) -> str:
    """``slide_id`` if it is a plain slide name; DataError naming ``source`` and the id if not.

    Ids become file names (``{id}.rle``, ``{id}.zarr``): ``../x`` must never reach a path.
    """
    if not SLIDE_ID.match(slide_id):
        raise DataError(source, f"id {slide_id!r} is not a plain slide name: {SLIDE_ID_RULE}")
    return slide_id


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
    """Ids in the order of ``sample_submission.csv`` (when present), else sorted.

    Every id of the sample must be a plain slide name (:func:`check_id`): the
    submission reads ``{id}.rle`` for each, so ``../../x`` would read outside the results.
    """
    sample = Path(data_dir) / SAMPLE_SUBMISSION_CSV
    if not sample.exists():
        return sorted(slide_ids)
    try:
        order = pd.read_csv(sample, dtype=str, keep_default_na=False)["id"].tolist()
    except (OSError, ValueError, KeyError) as err:
        raise DataError(sample, f"cannot read the id column: {err}") from err
    for slide_id in order:
        check_id(slide_id, sample)
    rest = sorted(set(slide_ids) - set(order))
    return order + rest


# ---------------------------------------------------------------- checks at planning


@dataclass(frozen=True)
class InputProblem:
    """One bad input found at planning: the file, what is wrong, and what the run does about it."""

    kind: str  # "unsupported_name" | "no_truth" | "orphan_row" | "unreadable_table"
    path: Path
    problem: str
    slide_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def table_ids(csv_path: str | Path) -> list[str]:
    """The ``id`` column of a Kaggle table, streamed (train.csv holds megabytes of RLE); [] if absent."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            if "id" not in header:
                raise DataError(csv_path, f"expected columns id,encoding; found {','.join(header)}")
            col = header.index("id")
            return [row[col] for row in reader if len(row) > col]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(csv_path, f"cannot read table: {err}") from err


def input_problems(data_dir: str | Path, slides: Iterable[SlideFile] | None = None) -> list[InputProblem]:
    """What a run would otherwise drop or misuse without a word, each naming its file.

    - a slide file whose name is not a valid id: not processed (:func:`unsupported_slide_files`);
    - a training slide with neither a ``train.csv`` row nor ``train/{id}.json``: no truth, so
      its tiles would all train as background; it is left out of training;
    - a ``train.csv`` id without a ``train/{id}.tiff``: its row is unused.
    """
    data_dir = Path(data_dir)
    slides = list(discover_slides(data_dir) if slides is None else slides)
    problems = [
        InputProblem("unsupported_name", path, UNSUPPORTED_NAME) for path in unsupported_slide_files(data_dir)
    ]
    try:
        train_ids = set(table_ids(data_dir / TRAIN_CSV))
    except DataError as err:  # the stages that read it fail naming it; planning goes on
        problems.append(InputProblem("unreadable_table", Path(err.path or data_dir / TRAIN_CSV),
                                     f"{err.problem} (training slides not checked for truth)"))
        return problems
    training = {s.id: s for s in slides if s.split == "train"}
    for slide in training.values():
        if slide.id not in train_ids and polygons_path(data_dir, slide.id) is None:
            problems.append(InputProblem(
                "no_truth", slide.path,
                f"no {TRAIN_CSV} row and no train/{slide.id}.json: no truth to train or validate on, "
                "so the slide is left out of training (add its truth to use it)",
                slide.id,
            ))
    for slide_id in sorted(train_ids - set(training)):
        problems.append(InputProblem(
            "orphan_row", data_dir / TRAIN_CSV,
            f"id {slide_id!r} has no slide train/{slide_id}.tiff: its row is not used", slide_id,
        ))
    return problems


def planned_slides(
    data_dir: str | Path,
    slides: dict[str, SlideFile] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, SlideFile]:
    """The slides a workflow run plans for: ``slides`` less the training slides without truth.

    Warns (``warn``, the module logger by default) about every :func:`input_problems`
    entry, at every run, so nothing vanishes silently; a badly named file never stops the
    other slides. DataError naming ``data_dir`` when it holds no slide at all. Leaving the
    truthless slides out here keeps the whole chain consistent: no tiles, no fold and no
    out-of-fold job (which needs truth) for them.
    """
    data_dir = Path(data_dir)
    warn = warn or log.warning
    if slides is None:
        slides = {s.id: s for s in discover_slides(data_dir)}
    problems = input_problems(data_dir, slides.values())
    for problem in problems:
        warn(str(problem))
    if not slides:
        unsupported = sum(p.kind == "unsupported_name" for p in problems)
        raise DataError(
            data_dir,
            "no slides under train/ or test/ (expected train/{id}.tiff and test/{id}.tiff)"
            + (f"; {unsupported} file(s) with unsupported names, see the warnings" if unsupported else ""),
        )
    dropped = {p.slide_id for p in problems if p.kind == "no_truth"}
    planned = {i: s for i, s in slides.items() if i not in dropped}
    if dropped and not any(s.split == "train" for s in planned.values()):
        tests = sum(s.split == "test" for s in planned.values())
        warn(f"{data_dir / 'train'}: no training slide has truth: nothing is trained"
             + (f", and the {tests} test slide(s) are not predicted" if tests else ""))
    return planned
