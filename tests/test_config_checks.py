"""Cross-key config checks: each names the keys and both values; the shipped configs pass."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.config_checks import LOSS_NAMES, check_config
from pipeline.errors import ConfigError
from pipeline.losses import LOSSES
from tests.conftest import REPO


@pytest.mark.parametrize("name", ["config/config.yaml", "config/demo.yaml", "bench/real-cpu.yaml"])
def test_shipped_configs_pass(name: str) -> None:
    check_config(load_config(REPO / name))


@pytest.mark.parametrize(
    ("overrides", "messages"),
    [
        ({"predict": {"window": 1024, "out_size": 512}},
         ["predict.window/predict.out_size (1024/512 = 1/2 scale) differs from tiles.size/tiles.out_size "
          "(1536/512 = 1/3)"]),
        ({"predict": {"window": 3072, "out_size": 1024}}, []),  # same scale, larger window: fine
        ({"tiles": {"size": 768, "out_size": 1024}, "predict": {"window": 768, "out_size": 1024}},
         ["tiles.out_size (1024) is larger than tiles.size (768)",
          "predict.out_size (1024) is larger than predict.window (768)"]),
        ({"tiles": {"size": 1000, "out_size": 300}, "predict": {"window": 1000, "out_size": 300}},
         ["predict.window (1000) must be a positive multiple of predict.out_size (300)"]),
        ({"train": {"loss": {"bce": 1.0, "dcie": 1.0}}}, ["train.loss: unknown loss(es) dcie"]),
        ({"train": {"loss_finetune": {"lovasz": 1.0}}}, ["train.finetune_from_epoch: must be an epoch >= 1"]),
    ],
)
def test_inconsistent_keys_are_named_with_their_values(overrides: dict, messages: list[str]) -> None:
    config = load_config(None, overrides)
    if not messages:
        check_config(config)
        return
    with pytest.raises(ConfigError) as err:
        check_config(config)
    for message in messages:
        assert message in str(err.value)


def test_weights_files_named_must_exist(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the working directory, as in the jobs
    (tmp_path / "enc.pt").write_bytes(b"")
    check_config(load_config(None, {"model": {"encoder_weights": "enc.pt"}}))
    check_config(load_config(None, {"model": {"encoder_weights": "imagenet"}}))
    check_config(load_config(None, {"filter": {"enabled": False, "checkpoint": "gone.pt"}}))  # not read
    with pytest.raises(ConfigError) as err:
        check_config(load_config(None, {"model": {"encoder_weights": "gone.pt"}, "filter": {"checkpoint": "x.pt"}}))
    assert "model.encoder_weights: 'gone.pt' is not an existing file" in str(err.value)
    assert "filter.checkpoint: 'x.pt' is not an existing file" in str(err.value)


def test_loss_names_are_the_losses_implemented() -> None:
    assert tuple(LOSSES) == LOSS_NAMES
