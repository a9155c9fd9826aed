"""Cross-validation folds, grouped by donor when the data set says who the donor is.

The real HuBMAP data has several slides per donor (``patient_number`` in
``HuBMAP-20-dataset_information.csv``); slides of one kidney share staining,
scanner settings and anatomy, so a fold that trains on one of them and validates
on its sibling scores higher than it would on a new donor. Folds are therefore
dealt by group: a donor when the table names one, else the slide itself. The
assignment is computed once, where the workflow is planned, and handed to every
job that needs it (training, the out-of-fold predictions), so all agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError
from pipeline.progress import get_logger

log = get_logger(__name__)

DATASET_INFO_CSV = "HuBMAP-20-dataset_information.csv"
DONOR_COLUMN = "patient_number"


def slide_groups(data_dir: str | Path, slide_ids: Iterable[str]) -> dict[str, str]:
    """Slide id -> group: ``donor:<patient_number>`` from the dataset table, else ``slide:<id>``.

    A slide missing from the table (or with no donor) is its own group, with a warning
    when the table exists and has the donor column.
    """
    ids = sorted({str(s) for s in slide_ids})
    groups = {i: f"slide:{i}" for i in ids}
    table_path = Path(data_dir) / DATASET_INFO_CSV
    if not table_path.is_file():
        return groups
    try:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(table_path, f"cannot read table: {err}") from err
    if DONOR_COLUMN not in table.columns:
        return groups
    if "image_file" not in table.columns:
        raise DataError(table_path, f"has {DONOR_COLUMN!r} but no 'image_file' column to match slides")
    donors = {}
    for image_file, donor in zip(table["image_file"], table[DONOR_COLUMN], strict=True):
        stem = Path(image_file.strip()).stem
        if donor.strip():
            donors[stem] = donor.strip()
    unknown = [i for i in ids if i not in donors]
    if unknown:
        log.warning("%s: no %s for slide(s) %s: each is its own fold group", table_path, DONOR_COLUMN,
                    ", ".join(unknown))
    groups.update({i: f"donor:{donors[i]}" for i in ids if i in donors})
    return groups


def assign_folds(groups: Mapping[str, str] | Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """Slide -> fold in ``0..folds-1``, every group wholly in one fold.

    ``groups`` maps slide -> group (a plain list of slides makes each slide its own
    group). Groups are shuffled with ``seed``, then dealt largest first, each to the
    fold with the fewest slides so far (ties: the lowest fold), which for one slide
    per group is a seeded round-robin. ``folds=1`` puts every slide in fold 0.
    """
    if not isinstance(groups, Mapping):
        groups = {str(s): f"slide:{s}" for s in groups}
    if folds < 1:
        raise ConfigError(None, f"train.folds: must be >= 1, got {folds}")
    members: dict[str, list[str]] = {}
    for slide in sorted(groups):
        members.setdefault(groups[slide], []).append(slide)
    names = sorted(members)
    if folds > 1 and len(names) < folds:
        kind = "donor(s)" if any(g.startswith("donor:") for g in names) else "training slide(s)"
        raise ConfigError(
            None,
            f"train.folds={folds} but only {len(names)} {kind} "
            f"({', '.join(g.split(':', 1)[1] for g in names) or 'none'}): folds are grouped by "
            f"{'donor' if kind.startswith('donor') else 'slide'}, use train.folds <= {max(1, len(names))}",
        )
    order = [names[j] for j in np.random.default_rng(seed).permutation(len(names))]
    order.sort(key=lambda g: -len(members[g]))  # stable: the shuffle decides among equal sizes
    sizes = [0] * folds
    assignment: dict[str, int] = {}
    for group in order:
        fold = min(range(folds), key=lambda k: (sizes[k], k))
        sizes[fold] += len(members[group])
        assignment.update({slide: fold for slide in members[group]})
    return assignment


def fold_assignment(data_dir: str | Path, slide_ids: Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """The workflow's fold of every training slide: :func:`slide_groups` dealt by :func:`assign_folds`."""
    return assign_folds(slide_groups(data_dir, slide_ids), folds, seed)


def validation_slides(assignment: Mapping[str, int], fold: int, folds: int) -> list[str]:
    """The slides fold ``fold`` validates on (none when ``folds == 1``: it trains on all)."""
    if folds == 1:
        return []
    return sorted(s for s, f in assignment.items() if f == fold)
