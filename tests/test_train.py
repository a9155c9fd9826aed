"""Training loop on small synthetic Zarr tile stores: learning, checkpoints, resume, seeds, folds.

Stores are made here the way pipeline/tiles.py writes them (Zarr v3 group, arrays
"images" (N, S, S, 3) and "masks" (N, S, S), one tile per chunk): dark discs on
pink noise (positives, mask = discs), pink noise alone, and white glass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.augment import build_augment, seed_augment
from pipeline.config import AugmentConfig, Config, load_config
from pipeline.errors import ConfigError, DataError
from pipeline.folds import assign_folds
from pipeline.models import build_model, load_model
from pipeline.tensors import to_tensor
from pipeline.tile_dataset import TileDataset, make_loader
from pipeline.train import (
    METRIC_COLUMNS,
    _Runner,
    evaluate,
    train_fold,
    train_one_epoch,
)
from tests.tile_stores import ENCODER, make_tile_stores

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_config(**train) -> Config:
    return load_config(
        overrides={
            "model": {"arch": "Unet", "encoder": ENCODER},
            "train": {
                "epochs": 3,
                "batch_size": 4,
                "lr": 3e-3,
                "folds": 3,
                "patience": 0,
                "device": "cpu",
                "seed": 7,
                **train,
            },
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[pd.DataFrame, dict[str, Path]]:
    return make_tile_stores(tmp_path_factory.mktemp("stores"))


# --------------------------------------------------------------------------- folds, augment, dataset


def test_to_tensor_normalises_per_channel() -> None:
    images = np.zeros((2, 4, 5, 3), np.uint8)
    images[..., 0], images[..., 1], images[..., 2] = 255, 51, 0
    x = to_tensor(images, mean=(0.5, 0.2, 0.1), std=(0.5, 0.1, 0.2))
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x[:, 0], torch.tensor(1.0)) and torch.allclose(x[:, 1], torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(x[:, 2], torch.tensor(-0.5))
    assert to_tensor(images[0], (0, 0, 0), (1, 1, 1)).shape == (1, 3, 4, 5)  # one HWC image


def test_to_tensor_channels_last_is_the_same_values_in_channels_last_memory() -> None:
    """The CPU's table path gives bit-equal values to the arithmetic, laid out channels last."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 17, 23, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 128, 255)  # the table's ends and middle
    for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)):
        plain = to_tensor(images, mean, std)
        last = to_tensor(images, mean, std, channels_last=True)
        assert last.shape == plain.shape and last.is_contiguous(memory_format=torch.channels_last)
        assert not last.is_contiguous()  # really the other layout, not a copy of the plain one
        assert torch.equal(last, plain)
    assert to_tensor(images[0], (0, 0, 0), (1, 1, 1), channels_last=True).shape == (1, 3, 17, 23)


def test_augment_moves_mask_with_image_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[2:10, 3:20] = 1
    image[mask == 1] = 0  # the mask is where the image is black
    geometric = build_augment(AugmentConfig(flip=0.5, rot90=1.0, shift_scale_rotate=0, color=0, noise=0, blur=0))
    full = build_augment(AugmentConfig(clahe=0.5))
    for seed in range(6):
        seed_augment(geometric, seed)
        out = geometric(image=image, mask=mask)
        assert out["mask"].dtype == np.uint8 and out["mask"].sum() == mask.sum()
        assert (out["image"][out["mask"] == 1] == 0).all()  # moved together
        seed_augment(full, seed)
        a = full(image=image, mask=mask)["image"]
        seed_augment(full, seed)
        assert np.array_equal(a, full(image=image, mask=mask)["image"])  # same seed, same result
    assert len(build_augment(AugmentConfig(0, 0, 0, 0, 0, 0, 0)).transforms) == 0


def test_dataset_reads_tiles_and_checks_stores(data, tmp_path) -> None:
    index, stores = data
    ds = TileDataset(index, stores)
    assert ds.tile_shape == (64, 64) and len(ds) == len(index)  # tile size read from the store
    image, mask = ds[3]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and mask.shape == (64, 64)
    assert mask.mean() == pytest.approx(index["positive"].iloc[3])
    with pytest.raises(DataError, match="no tile store was given"):
        TileDataset(index, {"slide0": stores["slide0"]})
    bad = index.copy()
    bad.loc[0, "tile"] = 999
    with pytest.raises(DataError, match="slide0.zarr: tile index refers to tile 999"):
        TileDataset(bad, stores)
    with pytest.raises(DataError, match="missing.zarr: tile store not found"):
        TileDataset(index.iloc[:1], {"slide0": tmp_path / "missing.zarr"})


# --------------------------------------------------------------------------- training


def _val_dice(model: torch.nn.Module, index: pd.DataFrame, stores, config: Config) -> float:
    runner = _Runner(model, config, torch.device("cpu"))
    loader = make_loader(TileDataset(index, stores), 8, 0, torch.device("cpu"))
    from pipeline.losses import build_loss

    return evaluate(runner, loader, build_loss(config.train))[1]


@pytest.mark.parametrize("last", [True, False])
def test_cpu_training_runs_channels_last_when_configured(last: bool) -> None:
    """``train.channels_last`` applies on the CPU: model weights and batches in that layout,
    and a training step's loss equals the contiguous layout's up to float rounding."""
    config = small_config(epochs=1, channels_last=last)
    torch.manual_seed(0)
    runner = _Runner(build_model(config.model), config, torch.device("cpu"))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    x, _ = runner.batch(images, torch.zeros(2, 64, 64, dtype=torch.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last) == last
    conv = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == last
    torch.manual_seed(0)
    reference = _Runner(build_model(config.model), small_config(epochs=1), torch.device("cpu"))  # default: channels last
    with torch.no_grad():
        torch.testing.assert_close(runner.forward(x).float(), reference.forward(x).float(), atol=1e-4, rtol=1e-4)


def test_training_learns_and_writes_outputs(data, tmp_path) -> None:
    index, stores = data
    config = small_config(epochs=3)
    out = tmp_path / "fold0"
    metrics = train_fold(index, stores, 0, out, config)

    val_slides = [s for s, f in assign_folds(index["slide"].tolist(), 3, config.train.seed).items() if f == 0]
    val = index[index["slide"].isin(val_slides)]
    torch.manual_seed(0)
    untrained = _val_dice(build_model(config.model), val, stores, config)
    best = metrics["val_dice"].max()
    print(f"validation Dice: trained {best:.3f}, untrained {untrained:.3f}")
    assert best > 0.6 and best > untrained + 0.3, (best, untrained)

    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "last.pt", "metrics.csv", "model.pt"]
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == METRIC_COLUMNS and table["epoch"].tolist() == [1, 2, 3]
    assert (table["tiles_per_s"] > 0).all() and table["train_loss"].iloc[-1] < table["train_loss"].iloc[0]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["epoch"] == int(table.loc[table["val_dice"].idxmax(), "epoch"])  # best, not last
    assert ckpt["val_slides"] == val_slides and ckpt["config"] == config.to_dict()
    model, meta = load_model(out / "model.pt", "cpu")
    assert _val_dice(model, val, stores, config) == pytest.approx(best, abs=1e-6)



def test_validation_takes_every_tile_of_the_validation_slides(data, tmp_path) -> None:
    """The first pass only thins the training tiles: a fold validates on all its slides' tiles."""
    index, stores = data
    config = small_config(epochs=1, folds=2)
    assignment = {s: i % 2 for i, s in enumerate(sorted(index["slide"].unique()))}
    val_slides = sorted(s for s, f in assignment.items() if f == 1)
    kept = index[~index["slide"].isin(val_slides) | (index["tile"] % 2 == 0)]  # the filter dropped half
    out = tmp_path / "fold1"
    train_fold(kept, stores, 1, out, config, assignment=assignment, val_index=index)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["val_slides"] == val_slides
    assert ckpt["train_slides"] == sorted(set(assignment) - set(val_slides))
    model, _ = load_model(out / "model.pt", "cpu")
    every_tile = _val_dice(model, index[index["slide"].isin(val_slides)], stores, config)
    assert ckpt["metrics"]["val_dice"] == pytest.approx(every_tile, abs=1e-6)
    with pytest.raises(DataError, match="slide.*fold assignment lacks"):
        train_fold(kept, stores, 1, tmp_path / "x", config, assignment={val_slides[0]: 1})


def test_same_seed_same_metrics_and_exact_resume(data, tmp_path, caplog, monkeypatch) -> None:
    index, stores = data
    index = index[index["slide"] != "slide2"].groupby("slide").head(6)  # 2 slides x 6 tiles: quicker
    config = small_config(epochs=3, folds=2)
    straight = train_fold(index, stores, 1, tmp_path / "a", config)

    real_epoch = train_one_epoch

    def killed_in_epoch_3(*args):
        if "epoch 3/" in args[-1]:
            raise KeyboardInterrupt  # the job is killed during epoch 3
        return real_epoch(*args)

    monkeypatch.setattr("pipeline.train.train_one_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_fold(index, stores, 1, tmp_path / "b", config)
    monkeypatch.undo()
    before = pd.read_csv(tmp_path / "b" / "metrics.csv")
    cols = ["train_loss", "val_loss", "val_dice", "lr"]
    pd.testing.assert_frame_equal(before[cols], straight[cols].iloc[:2], check_exact=True)  # same seed

    caplog.set_level(logging.INFO, logger="pipeline.train")
    caplog.clear()  # only what follows (an earlier test may have left the logger at INFO)
    resumed = train_fold(index, stores, 1, tmp_path / "b", config)
    assert "resuming fold 1 from" in caplog.text and "at epoch 2" in caplog.text
    assert "epoch 1/3" not in caplog.text and "epoch 3/3" in caplog.text  # only epoch 3 ran
    pd.testing.assert_frame_equal(resumed[cols], straight[cols], check_exact=True)  # exact continuation
    after = pd.read_csv(tmp_path / "b" / "metrics.csv")
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # incl. seconds: not re-run


def test_resume_with_more_epochs(data, tmp_path, caplog) -> None:
    index, stores = data
    index = index[index["slide"] != "slide2"].groupby("slide").head(6)
    train_fold(index, stores, 1, tmp_path, small_config(epochs=2, folds=2))
    before = pd.read_csv(tmp_path / "metrics.csv")

    caplog.set_level(logging.INFO, logger="pipeline.train")
    caplog.clear()  # only what follows (an earlier test may have left the logger at INFO)
    more = train_fold(index, stores, 1, tmp_path, small_config(epochs=3, folds=2))
    assert "at epoch 2" in caplog.text and "epoch 1/3" not in caplog.text and "epoch 3/3" in caplog.text
    after = pd.read_csv(tmp_path / "metrics.csv")
    assert after["epoch"].tolist() == [1, 2, 3] and more["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3

    # a finished run does nothing; another config starts afresh
    caplog.clear()
    assert len(train_fold(index, stores, 1, tmp_path, small_config(epochs=3, folds=2))) == 3
    assert "epoch 3/3:" not in caplog.text
    fresh = train_fold(index, stores, 1, tmp_path, small_config(epochs=1, folds=2, lr=1e-3))
    assert fresh["epoch"].tolist() == [1] and "starting afresh" in caplog.text


def test_resumed_run_without_epochs_left_still_writes_the_model(data, tmp_path, caplog) -> None:
    """Snakemake deletes model.pt (not last.pt) before a rerun: the rerun must write it again."""
    index, stores = data
    index = index[index["slide"] != "slide2"].groupby("slide").head(6)
    train_fold(index, stores, 1, tmp_path, small_config(epochs=2, folds=2))
    first = torch.load(tmp_path / "model.pt", weights_only=True)
    (tmp_path / "model.pt").unlink()  # a kill after the last epoch, or a changed patience/device

    caplog.set_level(logging.INFO, logger="pipeline.train")
    caplog.clear()  # only what follows (an earlier test may have left the logger at INFO)
    metrics = train_fold(index, stores, 1, tmp_path, small_config(epochs=2, folds=2, patience=1))
    assert "epoch 1/2" not in caplog.text and "epoch 2/2:" not in caplog.text  # nothing retrained
    assert "model.pt written from the best epoch" in caplog.text
    again = torch.load(tmp_path / "model.pt", weights_only=True)
    assert again["epoch"] == first["epoch"] == int(metrics.loc[metrics["val_dice"].idxmax(), "epoch"])
    assert again["metrics"] == first["metrics"]
    for key, value in first["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key

    # one more epoch that may or may not improve: model.pt is the best epoch either way
    (tmp_path / "model.pt").unlink()
    metrics = train_fold(index, stores, 1, tmp_path, small_config(epochs=3, folds=2))
    assert metrics["epoch"].tolist() == [1, 2, 3]
    best_epoch = int(metrics.loc[metrics["val_dice"].idxmax(), "epoch"])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == best_epoch

    # fewer epochs than last.pt reached: that shorter run cannot be cut out of it, so it starts afresh
    caplog.clear()
    shorter = train_fold(index, stores, 1, tmp_path, small_config(epochs=1, folds=2))
    assert shorter["epoch"].tolist() == [1] and "beyond train.epochs=1: starting afresh" in caplog.text
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 1


def test_data_loader_workers_give_the_same_result(data, tmp_path) -> None:
    """Per-sample augmentation seeds: worker processes change nothing (and do not deadlock)."""
    index, stores = data
    index = index[index["slide"] != "slide2"].groupby("slide").head(5)
    runs = [
        train_fold(index, stores, 0, tmp_path / str(n), small_config(epochs=1, folds=2, num_workers=n)) for n in (0, 2)
    ]
    cols = ["train_loss", "val_loss", "val_dice"]
    pd.testing.assert_frame_equal(runs[0][cols], runs[1][cols], check_exact=True)


def test_early_stopping(data, tmp_path, monkeypatch) -> None:
    index, stores = data
    index = index[index["slide"] != "slide2"].groupby("slide").head(4)
    monkeypatch.setattr("pipeline.train.evaluate", lambda *a: (1.0, 0.5))  # Dice never improves
    metrics = train_fold(index, stores, 0, tmp_path, small_config(epochs=6, folds=2, patience=2))
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 1


def test_fold_errors(data, tmp_path) -> None:
    index, stores = data
    with pytest.raises(ConfigError, match="fold 3 out of range"):
        train_fold(index, stores, 3, tmp_path, small_config())
    with pytest.raises(ConfigError, match="train.folds=5 but only 3"):
        train_fold(index, stores, 0, tmp_path, small_config(folds=5))
    with pytest.raises(ConfigError, match="unknown loss"):
        train_fold(index, stores, 0, tmp_path, small_config(loss={"dcie": 1.0}))
