"""The command line: every stage has --help, and bad input gives one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

STAGES = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_every_architecture_stage_has_a_command() -> None:
    expected = {"sheet", "truth-check", "tissue", "tiles", "filter", "train", "predict", "encode", "submit", "evaluate"}
    assert expected <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    assert "--settings" in capsys.readouterr().out


def test_bad_settings_json_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "sheet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "s.csv"),
         "--settings", "{not json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ConfigError: --settings is not valid JSON")
    assert "Traceback" not in result.stderr


def test_missing_data_dir_names_the_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", "--data-dir", str(missing),
         "--predictions-dir", str(tmp_path), "--out", str(tmp_path / "sub.csv")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert f"DataError: {missing}: data directory does not exist" in result.stderr
    assert not (tmp_path / "sub.csv").exists()
