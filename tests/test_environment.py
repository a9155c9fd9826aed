"""pyproject.toml and environment.yml must pin the same packages to the same versions."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO


def _name(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", requirement.strip())
    assert match, f"not an exact pin: {requirement!r}"
    return match.group(1).lower().replace("_", "-"), match.group(3)


def test_pyproject_and_environment_pin_the_same_versions() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pyproject = dict(_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_env = dict(_name(r) for r in pip_section if not r.startswith("-e"))
    assert conda_env == pyproject


def test_environment_python_matches_requires_python() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.13"
