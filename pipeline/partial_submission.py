"""The submission written after a failed run: up-to-date predictions only, never stale ones.

When a run fails, ``predictions/{id}.rle`` files may still be on disk from an earlier
run, made with older models or settings. Which of them are up to date is Snakemake's
judgement in that run (the workflow's ``onerror`` hook passes the ids); this module
writes ``submission.csv`` from those alone, every other slide with an empty mask and
named in the message, or removes the outdated ``submission.csv`` when none is up to
date, so that a stale mask is never shipped.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.dataset import discover_slides, submission_order
from pipeline.submission import read_rle_file


@dataclass(frozen=True)
class PartialSubmission:
    """What was written: the ids in the submission, and those left empty (stale or missing)."""

    path: Path
    written: bool
    included: list[str]
    stale: list[str]
    missing: list[str]

    def message(self) -> str:
        parts = []
        if self.stale:
            parts.append(
                f"{len(self.stale)} stale prediction(s) left out (made with earlier slides, models or settings): "
                f"{', '.join(self.stale)}"
            )
        if self.missing:
            parts.append(f"no prediction for {len(self.missing)} slide(s): {', '.join(self.missing)}")
        if not self.written:
            return f"{self.path}: removed, no prediction is up to date: {'; '.join(parts)}"
        total = len(self.included) + len(self.stale) + len(self.missing)
        return (
            f"{self.path}: partial submission of {len(self.included)} of {total} slide(s), the others with "
            f"an empty mask: {'; '.join(parts) or 'none'}"
        )


def write_partial_submission(
    data_dir: str | os.PathLike[str],
    predictions_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    up_to_date: Collection[str],
) -> PartialSubmission:
    """``out_csv`` from the ``{id}.rle`` of the ids in ``up_to_date`` only (same order as the real one)."""
    predictions_dir, out_csv = Path(predictions_dir), Path(out_csv)
    test_ids = [s.id for s in discover_slides(data_dir) if s.split == "test"]
    ids = submission_order(data_dir, test_ids)
    present = {i for i in ids if (predictions_dir / f"{i}.rle").exists()}
    included = [i for i in ids if i in present and i in up_to_date]
    stale = [i for i in ids if i in present and i not in up_to_date]
    missing = [i for i in ids if i not in present]
    if not included:
        out_csv.unlink(missing_ok=True)
        return PartialSubmission(out_csv, False, included, stale, missing)
    keep = set(included)
    table = pd.DataFrame(
        {"id": ids, "predicted": [read_rle_file(predictions_dir / f"{i}.rle") if i in keep else "" for i in ids]}
    )
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return PartialSubmission(out_csv, True, included, stale, missing)
