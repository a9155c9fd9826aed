"""Whole-slide out-of-fold validation: exact full-resolution counts, the leakage guard, the summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr

from pipeline import rle
from pipeline.config import Config, ModelConfig, PredictConfig, TilesConfig
from pipeline.encode import encode_prediction
from pipeline.errors import DataError
from pipeline.metrics import dice_rle
from pipeline.models import build_model, save_checkpoint
from pipeline.oof import count_thresholds, run_oof_slide, summarise
from pipeline.thresholds import GRID

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SHAPE = (250, 310)  # not multiples of the scale: the last map row/column is partly off the slide
SCALE = 3


def _store(path: Path, seed: int, chunk_cols: int = 32) -> np.ndarray:
    """A prediction store of smooth blobs (what a consensus map looks like) at 1/SCALE."""
    rng = np.random.default_rng(seed)
    h, w = -(-SHAPE[0] // SCALE), -(-SHAPE[1] // SCALE)
    yy, xx = np.mgrid[0:h, 0:w]
    prob = np.zeros((h, w), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
        prob = np.maximum(prob, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)))
    arr = zarr.create_array(store=str(path), shape=(h, w), chunks=(16, chunk_cols), dtype="float16",
                            attributes={"slide_shape": list(SHAPE), "scale": SCALE})
    arr[:] = prob.astype(np.float16)
    return prob


def _truth(seed: int) -> str:
    rng = np.random.default_rng(seed + 100)
    mask = np.zeros(SHAPE, bool)
    for _ in range(5):
        y, x, r = rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1]), rng.integers(10, 35)
        yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1]]
        mask |= (yy - y) ** 2 + (xx - x) ** 2 < r**2
    return rle.encode(mask)


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_counts_equal_the_dice_of_the_encoded_rle_at_every_threshold(tmp_path, upsample) -> None:
    store = tmp_path / "p.zarr"
    _store(store, seed=1)
    truth = _truth(1)
    counts = count_thresholds(store, rle.parse(truth, SHAPE), upsample).as_dict()
    assert counts["truth"] == rle.area(truth)
    for t, inter, pred in zip(counts["grid"], counts["intersection"], counts["predicted"], strict=True):
        encoded = encode_prediction(store, SHAPE, PredictConfig(threshold=t, upsample=upsample))
        assert pred == rle.area(encoded), t
        assert inter == rle.intersection_area(rle.parse(encoded, SHAPE), rle.parse(truth, SHAPE)), t
    assert counts["predicted"] == sorted(counts["predicted"], reverse=True)  # a higher threshold never predicts more


def _slide_and_checkpoint(tmp_path: Path) -> tuple[Path, Path, Config]:
    rng = np.random.default_rng(3)
    slide = tmp_path / "train" / "s1.tiff"
    slide.parent.mkdir(parents=True)
    tifffile.imwrite(slide, rng.integers(0, 255, (256, 320, 3), dtype=np.uint8), tile=(128, 128), photometric="rgb")
    mask = np.zeros((256, 320), bool)
    mask[40:120, 60:200] = True
    pd.DataFrame({"id": ["s1"], "encoding": [rle.encode(mask)]}).to_csv(tmp_path / "train.csv", index=False)
    mcfg = ModelConfig(arch="Unet", encoder="resnet18")
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, build_model(mcfg), Config(model=mcfg, tiles=TilesConfig(size=256, out_size=128)),
                    epoch=1, metrics={}, extra={"fold": 1, "val_slides": ["s1"], "train_slides": ["s0"]})
    config = Config(predict=PredictConfig(window=256, out_size=128, batch_size=2, device="cpu", tissue_only=False,
                                          threshold="auto"))
    return slide, ckpt, config


def test_oof_slide_predicts_counts_and_refuses_a_training_slide(tmp_path) -> None:
    slide, ckpt, config = _slide_and_checkpoint(tmp_path)
    counts = run_oof_slide(slide, "s1", ckpt, None, tmp_path, tmp_path / "oof" / "s1.zarr",
                           tmp_path / "oof" / "s1.csv", config)
    table = pd.read_csv(tmp_path / "oof" / "s1.csv")
    assert table["threshold"].tolist() == pytest.approx(GRID) and (table["fold"] == 1).all()
    assert table["truth"].iloc[0] == counts["truth"] == 80 * 140
    arr = zarr.open_array(store=str(tmp_path / "oof" / "s1.zarr"), mode="r")
    assert arr.attrs["out_of_fold"] and arr.attrs["fold"] == 1 and tuple(arr.attrs["slide_shape"]) == (256, 320)
    with pytest.raises(DataError, match=r"model\.pt.*'s0' is not a validation slide.*s1"):
        run_oof_slide(slide, "s0", ckpt, None, tmp_path, tmp_path / "oof" / "s0.zarr", tmp_path / "oof" / "s0.csv",
                      config)
    assert not (tmp_path / "oof" / "s0.zarr").exists()


def test_summary_chooses_the_threshold_and_scores_the_encoded_rle(tmp_path) -> None:
    data, oof = tmp_path / "data", tmp_path / "oof"
    (data / "train").mkdir(parents=True)
    oof.mkdir()
    truths = {f"s{i}": _truth(i) for i in range(3)}
    pd.DataFrame({"id": list(truths), "encoding": list(truths.values())}).to_csv(data / "train.csv", index=False)
    csvs = []
    for i, (slide, truth) in enumerate(truths.items()):
        _store(oof / f"{slide}.zarr", seed=i)
        counts = count_thresholds(oof / f"{slide}.zarr", rle.parse(truth, SHAPE)).as_dict()
        rows = [[slide, i % 2, t, a, b, counts["truth"]]
                for t, a, b in zip(counts["grid"], counts["intersection"], counts["predicted"], strict=True)]
        csvs.append(oof / f"{slide}.csv")
        pd.DataFrame(rows, columns=["slide", "fold", "threshold", "intersection", "predicted", "truth"]).to_csv(
            csvs[-1], index=False)
    config = Config(predict=PredictConfig(threshold="auto", min_object_px=50))
    out = tmp_path / "evaluation"
    table = summarise(csvs, oof, data, out / "oof.csv", out / "curve.csv", out / "threshold.json", config)
    choice = json.loads((out / "threshold.json").read_text())
    curve = pd.read_csv(out / "curve.csv")
    best = curve.loc[curve["mean_dice"].idxmax(), "threshold"]
    assert choice["threshold"] == pytest.approx(best) and choice["chosen"] and choice["slides"] == 3
    written = pd.read_csv(out / "oof.csv", dtype={"slide": str})
    assert written["slide"].tolist() == ["s0", "s1", "s2", "mean"]
    encode_cfg = dataclasses.replace(config.predict, threshold=choice["threshold"])
    for slide, truth in truths.items():
        expected = dice_rle(encode_prediction(oof / f"{slide}.zarr", SHAPE, encode_cfg), truth, SHAPE)
        assert written.set_index("slide").loc[slide, "dice"] == pytest.approx(expected, abs=1e-6)
    assert written["dice"].iloc[-1] == pytest.approx(written["dice"].iloc[:-1].mean(), abs=1e-6)
    assert choice["oof_dice"] == pytest.approx(written["dice"].iloc[-1], abs=1e-6)
    assert len(table) == 4
    # a fixed threshold is scored as it is, never changed
    summarise(csvs, oof, data, out / "oof.csv", out / "curve.csv", out / "threshold.json",
              Config(predict=PredictConfig(threshold=0.5)))
    assert json.loads((out / "threshold.json").read_text())["threshold"] == 0.5
    # no out-of-fold slides (train.folds 1): nothing to validate, 0.5 for auto, said so
    summarise([], oof, data, out / "oof.csv", out / "curve.csv", out / "threshold.json", config)
    assert "not validated" in json.loads((out / "threshold.json").read_text())["threshold_source"]
