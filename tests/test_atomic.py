"""Atomic outputs: a failed write leaves neither a half-file nor a temporary behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.atomic import atomic_path, write_text_atomic


def test_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a,b\n")
        assert not target.exists()
        assert tmp.name.startswith(".") and tmp.name.endswith(".partial")
    assert target.read_text() == "a,b\n"
    assert list(target.parent.iterdir()) == [target]


def test_failure_keeps_the_old_result_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_directories_are_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "store.zarr"
    for value in ("first", "second"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "chunk").write_text(value)
    assert (target / "chunk").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "never.txt"):
            pass
