"""The out-of-fold threshold (predict.threshold: auto): counts, pooling, choice, and predict -> encode."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import torch
import zarr

from pipeline import thresholds as T
from pipeline.config import Config, ModelConfig, PredictConfig, TilesConfig, load_config
from pipeline.encode import encode_prediction
from pipeline.errors import ConfigError, DataError
from pipeline.metrics import dice
from pipeline.models import build_model, save_checkpoint
from pipeline.predict import run_predict

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _counts(prob: np.ndarray, truth: np.ndarray, batches: int = 3) -> dict:
    counts = T.ThresholdCounts()
    for p, t in zip(np.array_split(prob, batches), np.array_split(truth, batches), strict=True):
        counts.add(torch.from_numpy(p), torch.from_numpy(t))
    return counts.as_dict()


def test_counts_give_the_dice_of_each_threshold() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((6, 1, 32, 32)) < 0.2).astype(np.float32)
    prob = np.clip(truth * 0.5 + rng.random(truth.shape) * 0.6, 0, 1).astype(np.float32)
    curve = T.dice_curve(_counts(prob, truth))
    assert [t for t, _ in curve] == pytest.approx(T.GRID)
    for t, d in curve:
        assert d == pytest.approx(dice(prob >= t, truth))
    best_t, best_d = T.best_threshold([_counts(prob, truth)])
    assert best_d == max(d for _, d in curve) and dict(curve)[best_t] == best_d


def test_pooling_weighs_every_pixel_once_and_ties_go_to_the_middle() -> None:
    rng = np.random.default_rng(1)
    truth = (rng.random((8, 1, 16, 16)) < 0.3).astype(np.float32)
    prob = rng.random(truth.shape).astype(np.float32)
    whole = _counts(prob, truth)
    halves = [_counts(prob[:4], truth[:4]), _counts(prob[4:], truth[4:])]
    assert T.pool(halves) == whole
    # a perfectly separable fold: every threshold in (0.2, 0.8] scores 1.0 -> the one nearest 0.5
    perfect = _counts(np.where(truth > 0, 0.8, 0.2).astype(np.float32), truth)
    assert T.best_threshold([perfect]) == (0.5, 1.0)
    with pytest.raises(ValueError, match="grids"):
        T.pool([whole, {**whole, "grid": [0.5] * len(T.GRID)}])


def test_setting_is_checked_and_auto_needs_a_stored_threshold(tmp_path) -> None:
    for bad in (0.0, 1.0, 1.5, "best"):
        with pytest.raises(ConfigError, match="predict.threshold"):
            T.check_setting(bad)
    assert T.store_threshold(0.3, {}) == 0.3
    assert T.store_threshold("auto", {"threshold": 0.35}) == 0.35
    with pytest.raises(DataError, match=r"p\.zarr.*rerun the predict stage"):
        T.store_threshold("auto", {}, tmp_path / "p.zarr")
    assert load_config(overrides={"predict": {"threshold": "auto"}}).predict.threshold == "auto"


def test_choose_pools_the_folds_and_falls_back_to_one_half(caplog) -> None:
    truth = np.zeros((2, 1, 8, 8), np.float32)
    truth[:, :, 2:6, 2:6] = 1
    prob = np.where(truth > 0, 0.32, 0.12).astype(np.float32)  # best: any threshold in (0.12, 0.32]
    fold = {"oof_thresholds": _counts(prob, truth, batches=1)}
    attrs = T.choose([fold, {}], ["f0.pt", "f1.pt"])
    assert attrs["threshold"] == 0.3 and "over 1 fold" in attrs["threshold_source"]
    assert "f1.pt" in caplog.text
    with caplog.at_level(logging.WARNING):
        assert T.choose([{}], ["f0.pt"])["threshold"] == 0.5
    assert "no checkpoint holds out-of-fold counts" in caplog.text


def test_auto_threshold_travels_from_checkpoints_to_the_encoded_mask(tmp_path) -> None:
    """Predict stores the pooled out-of-fold threshold; encode with "auto" equals encode with that number."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)
    slide = tmp_path / "s.tiff"
    tifffile.imwrite(slide, image, tile=(128, 128), photometric="rgb")
    mcfg = ModelConfig(arch="Unet", encoder="resnet18")
    trained = Config(model=mcfg, tiles=TilesConfig(size=256, out_size=128))
    truth = np.zeros((4, 1, 8, 8), np.float32)
    truth[:, :, :4] = 1
    ckpts = []
    for fold, high in enumerate((0.62, 0.66)):  # pooled best threshold: 0.6
        prob = np.where(truth > 0, high, 0.58).astype(np.float32)
        torch.manual_seed(fold)
        ckpts.append(tmp_path / f"fold{fold}.pt")
        save_checkpoint(ckpts[-1], build_model(mcfg), trained, epoch=1, metrics={},
                        extra={"oof_thresholds": _counts(prob, truth, batches=2)})
    auto = Config(predict=PredictConfig(window=256, out_size=128, batch_size=2, device="cpu",
                                        tissue_only=False, threshold="auto"))
    run_predict(slide, ckpts, None, tmp_path / "p.zarr", auto)
    arr = zarr.open_array(store=str(tmp_path / "p.zarr"), mode="r")
    assert arr.attrs["threshold"] == 0.6 and "over 2 fold(s)" in arr.attrs["threshold_source"]
    fixed = PredictConfig(window=256, out_size=128, threshold=0.6)
    assert encode_prediction(tmp_path / "p.zarr", (256, 320), auto.predict) == encode_prediction(
        tmp_path / "p.zarr", (256, 320), fixed
    )
    # a store written with a fixed threshold cannot be encoded with "auto"
    run_predict(slide, ckpts, None, tmp_path / "q.zarr", Config(predict=fixed))
    with pytest.raises(DataError, match="q.zarr"):
        encode_prediction(tmp_path / "q.zarr", (256, 320), auto.predict)
