"""The out-of-fold threshold (predict.threshold: auto): counts, the mean per-slide curve, choice, predict -> encode."""

from __future__ import annotations

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
        counts.add(p if p.max() >= T.GRID[0] else None, t)  # None: nothing reaches the lowest threshold
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


def test_the_choice_maximises_the_mean_per_slide_dice_and_ties_go_to_the_middle() -> None:
    rng = np.random.default_rng(1)
    truth = (rng.random((8, 1, 16, 16)) < 0.3).astype(np.float32)
    prob = rng.random(truth.shape).astype(np.float32)
    slides = [_counts(prob[:4], truth[:4]), _counts(prob[4:], truth[4:])]
    mean = T.mean_dice_curve(slides)
    for (t, d), (_, d0), (_, d1) in zip(mean, T.dice_curve(slides[0]), T.dice_curve(slides[1]), strict=True):
        assert d == pytest.approx((d0 + d1) / 2)
    # a big slide scored best at 0.3 and a small one best at 0.7: Kaggle's mean weighs them the same
    big = np.zeros((1, 1, 64, 64), np.float32)
    big[..., :32, :] = 1
    small = np.zeros((1, 1, 8, 8), np.float32)
    small[..., :4, :] = 1
    slide_a = _counts(np.where(big > 0, 0.32, 0.28).astype(np.float32), big, batches=1)  # perfect in (0.28, 0.32]
    slide_b = _counts(np.where(small > 0, 0.72, 0.62).astype(np.float32), small, batches=1)  # in (0.62, 0.72]
    t, d = T.best_threshold([slide_a, slide_b])
    assert (t, d) == (0.3, pytest.approx((1.0 + 2 * 32 / (64 + 32)) / 2))  # slide_b all predicted at 0.3
    perfect = _counts(np.where(truth > 0, 0.8, 0.2).astype(np.float32), truth)
    assert T.best_threshold([perfect]) == (0.5, 1.0)  # every threshold in (0.2, 0.8] scores 1.0
    with pytest.raises(ValueError, match="grids"):
        T.mean_dice_curve([slides[0], {**slides[0], "grid": [0.5] * len(T.GRID)}])


def test_setting_is_checked_and_auto_needs_a_stored_threshold(tmp_path) -> None:
    for bad in (0.0, 1.0, 1.5, "best"):
        with pytest.raises(ConfigError, match="predict.threshold"):
            T.check_setting(bad)
    assert T.store_threshold(0.3, {}) == 0.3
    assert T.store_threshold("auto", {"threshold": 0.35}) == 0.35
    with pytest.raises(DataError, match=r"p\.zarr.*rerun the predict stage"):
        T.store_threshold("auto", {}, tmp_path / "p.zarr")
    assert load_config(overrides={"predict": {"threshold": "auto"}}).predict.threshold == "auto"


def test_choice_file_round_trip_and_errors(tmp_path) -> None:
    T.write_choice(tmp_path / "t.json", 0.35, "out-of-fold mean Dice 0.9", oof_dice=0.9)
    assert T.read_choice(tmp_path / "t.json") == {"threshold": 0.35, "threshold_source": "out-of-fold mean Dice 0.9"}
    (tmp_path / "bad.json").write_text('{"threshold": 1.5}')
    with pytest.raises(DataError, match=r"bad\.json.*no threshold"):
        T.read_choice(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"missing\.json"):
        T.read_choice(tmp_path / "missing.json")


def test_auto_threshold_travels_from_the_choice_to_the_encoded_mask(tmp_path) -> None:
    """Predict stores the out-of-fold choice; encode with "auto" equals encode with that number."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)
    slide = tmp_path / "s.tiff"
    tifffile.imwrite(slide, image, tile=(128, 128), photometric="rgb")
    mcfg = ModelConfig(arch="Unet", encoder="resnet18")
    trained = Config(model=mcfg, tiles=TilesConfig(size=256, out_size=128))
    ckpt = tmp_path / "fold0.pt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, build_model(mcfg), trained, epoch=1, metrics={})
    T.write_choice(tmp_path / "threshold.json", 0.6, "out-of-fold mean Dice 0.8 over 2 slide(s)")
    auto = Config(predict=PredictConfig(window=256, out_size=128, batch_size=2, device="cpu",
                                        tissue_only=False, threshold="auto"))
    with pytest.raises(ConfigError, match="threshold-json"):
        run_predict(slide, [ckpt], None, tmp_path / "p.zarr", auto)
    run_predict(slide, [ckpt], None, tmp_path / "p.zarr", auto, tmp_path / "threshold.json")
    arr = zarr.open_array(store=str(tmp_path / "p.zarr"), mode="r")
    assert arr.attrs["threshold"] == 0.6 and "over 2 slide(s)" in arr.attrs["threshold_source"]
    fixed = PredictConfig(window=256, out_size=128, threshold=0.6)
    assert encode_prediction(tmp_path / "p.zarr", (256, 320), auto.predict) == encode_prediction(
        tmp_path / "p.zarr", (256, 320), fixed
    )
    # a store written with a fixed threshold cannot be encoded with "auto"
    run_predict(slide, [ckpt], None, tmp_path / "q.zarr", Config(predict=fixed))
    with pytest.raises(DataError, match="q.zarr"):
        encode_prediction(tmp_path / "q.zarr", (256, 320), auto.predict)
