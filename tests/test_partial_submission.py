"""The submission after a failed run: only up-to-date predictions, the others named."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.partial_submission import write_partial_submission


def _data(tmp_path: Path, ids: list[str]) -> tuple[Path, Path]:
    data, predictions = tmp_path / "data", tmp_path / "results" / "predictions"
    (data / "test").mkdir(parents=True)
    predictions.mkdir(parents=True)
    for slide_id in ids:
        (data / "test" / f"{slide_id}.tiff").write_bytes(b"")
    return data, predictions


def test_stale_and_missing_slides_get_empty_masks_and_are_named(tmp_path: Path) -> None:
    data, predictions = _data(tmp_path, ["a", "b", "c"])
    (predictions / "a.rle").write_text("1 2\n")
    (predictions / "b.rle").write_text("5 6\n")  # left by an earlier run
    out = tmp_path / "results" / "submission.csv"
    result = write_partial_submission(data, predictions, out, up_to_date={"a"})
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table.values.tolist() == [["a", "1 2"], ["b", ""], ["c", ""]]
    assert result.message() == (
        f"{out}: partial submission of 1 of 3 slide(s), the others with an empty mask: 1 stale prediction(s) "
        "left out (made with earlier slides, models or settings): b; no prediction for 1 slide(s): c"
    )


def test_nothing_up_to_date_removes_the_outdated_submission(tmp_path: Path) -> None:
    data, predictions = _data(tmp_path, ["a", "b"])
    (predictions / "a.rle").write_text("1 2\n")
    out = tmp_path / "results" / "submission.csv"
    out.write_text("id,predicted\na,1 2\nb,\n")  # yesterday's
    result = write_partial_submission(data, predictions, out, up_to_date=set())
    assert not out.exists() and not result.written
    assert result.message() == (
        f"{out}: removed, no prediction is up to date: 1 stale prediction(s) left out (made with earlier "
        "slides, models or settings): a; no prediction for 1 slide(s): b"
    )
