"""The typed config: defaults, strict checking, and agreement with the Snakemake schema."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError
from tests.conftest import REPO

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def _schema_defaults(schema: dict) -> dict:
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            out[key] = _schema_defaults(prop)
        else:
            out[key] = prop.get("default")
    return out


def test_schema_defaults_equal_dataclass_defaults() -> None:
    assert _schema_defaults(SCHEMA) == Config().to_dict()


def test_every_key_is_documented_in_schema_and_readme() -> None:
    readme = (REPO / "config" / "README.md").read_text()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            name = f"{prefix}{field.name}"
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name], f"{name}.")
                continue
            assert f"`{name}`" in readme, f"config/README.md does not document {name}"

    walk(Config, "")


SHIPPED_CONFIGS = ["config/config.yaml", "config/demo.yaml", "config/nuclei.yaml", "bench/real-cpu.yaml"]


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_validate(name: str) -> None:
    data = yaml.safe_load((REPO / name).read_text())
    jsonschema.validate(data, SCHEMA)
    load_config(REPO / name)


def test_overrides_merge_into_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\n")
    config = load_config(path, {"train": {"epochs": 2}, "predict": {"tta": ["hflip"]}})
    assert (config.train.epochs, config.train.batch_size, config.predict.tta) == (2, 4, ("hflip",))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train": {"epoch": 3}}, "train: unknown key(s) epoch"),
        ({"train": {"epochs": "many"}}, "train.epochs: expected an integer"),
        ({"predict": {"overlap": True}}, "predict.overlap: expected a number"),
        ({"tiles": 5}, "tiles: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: cannot read config"):
        load_config(path)


def _leaf_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict) and key != "loss":
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@pytest.mark.parametrize("name", ["config/demo.yaml", "config/nuclei.yaml", "bench/real-cpu.yaml"])
def test_small_configs_set_every_key_the_real_config_sets(name: str) -> None:
    """Snakemake loads config/config.yaml first and --configfile demo.yaml on top of it:
    a key only the real config sets would leak real-run values (e.g. 8 loader workers) into the demo."""
    real = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    small = yaml.safe_load((REPO / name).read_text())
    assert _leaf_keys(real) - {"data_dir", "results_dir"} <= _leaf_keys(small)


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# ...`` comment after each field of a config dataclass (its description)."""
    import inspect
    import re

    lines, _ = inspect.getsourcelines(cls)
    return {m[1]: m[2] for line in lines if (m := re.match(r"\s+(\w+): .*?  # (.*)$", line))}


def test_schema_descriptions_equal_config_comments() -> None:
    def walk(cls: type, schema: dict, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        comments = _field_comments(cls)
        for field in dataclasses.fields(cls):
            prop = schema["properties"][field.name]
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name], prop, f"{prefix}{field.name}.")
            else:
                assert prop.get("description") == comments.get(field.name), f"{prefix}{field.name}"

    walk(Config, SCHEMA, "")


def test_patience_zero_disables_early_stopping_in_schema_and_config() -> None:
    jsonschema.validate({"train": {"patience": 0}}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"train": {"patience": -1}}, SCHEMA)
    assert load_config(None, {"train": {"patience": 0}}).train.patience == 0
    assert "0 disables early stopping" in SCHEMA["properties"]["train"]["properties"]["patience"]["description"]
