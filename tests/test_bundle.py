"""Model bundles: the card, checks against a serving config, promotion and the registry (real checkpoints)."""

from __future__ import annotations

import csv
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import thresholds as T
from pipeline.bundle import CARD, check_against, contradictions, promote, read_bundle, write_bundle
from pipeline.config import Config, ModelConfig, PredictConfig, TilesConfig
from pipeline.errors import ConfigError, DataError
from pipeline.kaggle import bundle_config
from pipeline.models import build_model, load_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TRAINED = Config(
    model=ModelConfig(arch="Unet", encoder="resnet18", decoder_channels=(32, 16, 16, 8, 8)),
    tiles=TilesConfig(size=384, out_size=128),
    predict=PredictConfig(window=384, out_size=128, fill_holes=True, min_object_px=500),
)


def _bundle(tmp_path: Path, name: str, oof_dice: float | None, folds: int = 2) -> Path:
    """A bundle of ``folds`` freshly initialised checkpoints whose out-of-fold Dice is ``oof_dice``."""
    work = tmp_path / f"{name}-work"
    work.mkdir()
    checkpoints = []
    for k in range(folds):
        torch.manual_seed(k)
        ckpt = work / f"model{k}.pt"
        save_checkpoint(ckpt, build_model(TRAINED.model), TRAINED, epoch=1, metrics={},
                        extra={"colour": {"method": "none"}})
        checkpoints.append(ckpt)
    extra = {"oof_dice": oof_dice, "slides": 2, "folds": folds, "chosen": True} if oof_dice is not None else {}
    T.write_choice(work / "threshold.json", 0.45, "out-of-fold mean Dice over 2 slide(s)", **extra)
    (work / "oof.csv").write_text("slide,fold,dice,predicted_area,truth_area,threshold\n"
                                  f"a,0,{oof_dice or 0},10,12,0.45\nb,1,{oof_dice or 0},9,9,0.45\n"
                                  f"mean,,{oof_dice or 0},,,0.45\n")
    out = tmp_path / name
    write_bundle(out, checkpoints, work / "threshold.json", work / "oof.csv", TRAINED, {"a": 0, "b": 1})
    return out


def test_card_holds_what_serving_needs_and_the_weights_are_the_trained_ones(tmp_path: Path) -> None:
    path = _bundle(tmp_path, "bundle", 0.81)
    card = yaml.safe_load((path / CARD).read_text())
    assert card["geometry"] == {"tile_size": 384, "out_size": 128}
    assert card["model"]["encoder"] == "resnet18" and card["model"]["arch"] == "Unet"
    assert card["threshold"]["value"] == 0.45 and card["threshold"]["chosen"] is True
    assert card["postprocessing"] == {"fill_holes": True, "min_object_px": 500, "upsample": "bilinear"}
    assert card["validation"]["oof_dice"] == 0.81
    assert card["validation"]["per_slide"] == {"a": 0.81, "b": 0.81}
    assert card["training_slides"] == ["a", "b"] and card["fold_of_slide"] == {"a": 0, "b": 1}
    assert card["versions"]["torch"] == metadata.version("torch") and card["versions"]["python"]
    assert card["config"]["tiles"]["size"] == 384 and card["created"]
    assert card["normalisation"] == {"method": "none"}
    assert set(card["sha256"]) == {"fold0.pt", "fold1.pt", "threshold.json"}
    bundle = read_bundle(path, verify=True)
    assert [p.name for p in bundle.checkpoints] == ["fold0.pt", "fold1.pt"]
    model, _ = load_model(bundle.checkpoints[1])
    torch.manual_seed(1)
    fresh = build_model(TRAINED.model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert not list(tmp_path.glob(".bundle.tmp-*")), "staging directory left behind"


def test_altered_or_partial_bundles_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = _bundle(tmp_path, "bundle", 0.8)
    with (path / "fold1.pt").open("ab") as fh:
        fh.write(b"x")
    read_bundle(path)  # without verify, only presence is checked
    with pytest.raises(DataError, match=r"fold1\.pt.*checksum"):
        read_bundle(path, verify=True)
    (path / "fold0.pt").unlink()
    with pytest.raises(DataError, match=r"fold0\.pt.*missing from the bundle"):
        read_bundle(path)
    with pytest.raises(DataError, match="model bundle not found"):
        read_bundle(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CARD).write_text("format: something-else\n")
    with pytest.raises(DataError, match="not a model card"):
        read_bundle(tmp_path / "other")


def test_settings_that_contradict_the_bundle_are_named_with_both_values(tmp_path: Path) -> None:
    bundle = read_bundle(_bundle(tmp_path, "bundle", 0.8))
    same_scale = Config(predict=PredictConfig(window=768, out_size=256, fill_holes=True, min_object_px=500))
    assert contradictions(same_scale, bundle) == []  # other window, same scale: the model sees the same pixels
    wrong = Config(predict=PredictConfig(window=1536, out_size=256, fill_holes=False, min_object_px=500))
    problems = contradictions(wrong, bundle)
    assert len(problems) == 2
    assert "1536/256" in problems[0] and "384/128" in problems[0]
    assert "predict.fill_holes is False" in problems[1] and "True" in problems[1]
    with pytest.raises(ConfigError, match="predict.window/predict.out_size"):
        check_against(wrong, bundle)
    # the Kaggle command starts from the bundle's own config: serving settings that agree with it
    config = bundle_config(bundle, {"predict": {"batch_size": 3}})
    assert (config.predict.window, config.predict.out_size, config.predict.batch_size) == (384, 128, 3)
    assert config.predict.fill_holes and config.predict.min_object_px == 500
    with pytest.raises(ConfigError, match="predict.min_object_px is 0"):
        bundle_config(bundle, {"predict": {"min_object_px": 0}})


def test_promotion_keeps_the_better_bundle_and_logs_every_decision(tmp_path: Path) -> None:
    serving = tmp_path / "models" / "serving"
    first = promote(_bundle(tmp_path, "b1", 0.80), serving, tmp_path / "p1.json")
    assert first["promoted"] and first["reason"] == "no serving bundle yet"
    assert read_bundle(serving, verify=True).oof_dice == 0.80
    worse = promote(_bundle(tmp_path, "b2", 0.75), serving)
    assert not worse["promoted"] and "0.7500 < serving 0.8000" in worse["reason"]
    assert read_bundle(serving).oof_dice == 0.80
    tie = promote(_bundle(tmp_path, "b3", 0.80), serving)
    assert tie["promoted"]
    unvalidated = promote(_bundle(tmp_path, "b4", None), serving)
    assert not unvalidated["promoted"] and read_bundle(serving).oof_dice == 0.80
    with open(tmp_path / "models" / "registry.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["promoted"] for r in rows] == ["True", "False", "True", "False"]
    assert [r["bundle"].rsplit("/", 1)[-1] for r in rows] == ["b1", "b2", "b3", "b4"]
    assert json.loads((tmp_path / "p1.json").read_text())["promoted"] is True
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["registry.csv", "serving"]
