"""U-Net's border-weighted BCE (``border_bce``): the weight map, the loss, the data path, the config."""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from pipeline import losses
from pipeline.augment import build_augment
from pipeline.config import AugmentConfig, TrainConfig, load_config
from pipeline.config_checks import check_config
from pipeline.errors import ConfigError
from pipeline.losses import (
    BORDER_REACH,
    BorderBCE,
    BorderWeights,
    border_weight_map,
    build_loss,
    class_balance_weights,
    needs_border_weights,
)
from pipeline.tile_dataset import TileDataset
from pipeline.train import train_fold
from tests.test_config import SCHEMA
from tests.test_train import small_config
from tests.tile_stores import make_tile_stores

pytestmark = pytest.mark.usefixtures("torch_one_thread")

YY, XX = np.mgrid[:64, :64]


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def _two_discs() -> np.ndarray:
    """Discs of radius 12 on row 32: the first ends at column 30, the second starts at 33 (gap: 31, 32)."""
    mask = _disc(32, 18, 12) | _disc(32, 45, 12)
    assert not mask[32, 31:33].any() and mask[32, 30] and mask[32, 33]
    return mask.astype(np.uint8)


# --------------------------------------------------------------------------- the weight map


def test_weight_map_peaks_in_the_gap_between_two_objects_and_decays() -> None:
    mask = _two_discs()
    w0, sigma = 10.0, 5.0
    w = border_weight_map(mask, w0, sigma)
    wc = class_balance_weights(mask)
    assert w.dtype == np.float32 and w.shape == mask.shape
    y, x = np.unravel_index(np.argmax(w), w.shape)
    assert y == 32 and x in (31, 32)  # the maximum is in the gap
    # gap pixel: d1 = 1, d2 = 2 -> w_c + w0 * exp(-9 / (2 sigma^2)) (0.84 w0 at sigma 5)
    expected = wc[32, 31] + w0 * math.exp(-9 / (2 * sigma**2))
    assert w[32, 31] == pytest.approx(expected, rel=1e-5) and w[32, 31] > wc[32, 31] + 0.8 * w0
    # with a wide sigma the gap weighs w_c + w0 (the paper's "separating border")
    wide = border_weight_map(mask, w0, 50.0)
    assert wide[32, 31] == pytest.approx(wc[32, 31] + w0, rel=2e-3)
    # moving away from the gap (up column 31) the weight decays to w_c; far away it is w_c exactly
    column = w[32::-1, 31]
    assert (np.diff(column) <= 1e-6).all() and column[-1] == pytest.approx(wc[0, 31])
    assert w[0, 0] == wc[0, 0] and w[63, 63] == wc[63, 63]
    # the border term is on background pixels only: objects keep their class weight
    assert np.array_equal(w[mask > 0], wc[mask > 0])


def test_single_object_or_far_apart_objects_have_no_border_term() -> None:
    one = _disc(30, 30, 12).astype(np.uint8)
    assert np.array_equal(border_weight_map(one), class_balance_weights(one))
    far = (_disc(8, 8, 5) | _disc(55, 55, 5)).astype(np.uint8)  # gap > BORDER_REACH * sigma
    assert np.array_equal(border_weight_map(far, 10.0, 5.0), class_balance_weights(far))
    empty = np.zeros((16, 16), np.uint8)
    assert np.array_equal(border_weight_map(empty), np.ones((16, 16), np.float32))
    # w0 = 0: class balancing only
    assert np.array_equal(border_weight_map(_two_discs(), w0=0.0), class_balance_weights(_two_discs()))


def test_class_balancing_gives_each_class_half_the_weight() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[:2] = 1  # 20 % foreground
    wc = class_balance_weights(mask)
    assert wc[0, 0] == pytest.approx(0.5 / 0.2) and wc[9, 9] == pytest.approx(0.5 / 0.8)
    assert wc[mask > 0].sum() == pytest.approx(wc[mask == 0].sum())  # each class: half the total
    assert wc.mean() == pytest.approx(1.0)  # plain BCE's scale
    # one class only: all ones
    assert np.array_equal(class_balance_weights(np.zeros((4, 4))), np.ones((4, 4), np.float32))
    assert np.array_equal(class_balance_weights(np.ones((4, 4))), np.ones((4, 4), np.float32))
    # a sliver of glomerulus at the tile edge: the frequency is floored at 5 % (weight <= 10)
    sliver = np.zeros((100, 100), np.uint8)
    sliver[0, :3] = 1
    assert class_balance_weights(sliver).max() == pytest.approx(10.0)


def _reference(mask: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula with one whole-tile distance transform per object (no windows, no cap)."""
    fg = mask > 0
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    w = class_balance_weights(mask).astype(np.float64)
    if n < 2:
        return w
    dist = np.stack([ndimage.distance_transform_edt(labels != k) for k in range(1, n + 1)])
    d1, d2 = np.sort(dist, axis=0)[:2]
    total = d1 + d2
    term = w0 * np.exp(-(total**2) / (2 * sigma**2))
    return w + np.where(~fg & (total <= BORDER_REACH * sigma), term, 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_weight_map_equals_the_whole_tile_formula(seed: int) -> None:
    """The windowed distance transforms and the neighbour filter change nothing within reach."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((64, 64), bool)
    for _ in range(rng.integers(3, 8)):
        mask |= _disc(*rng.uniform(0, 64, 2), rng.uniform(2, 9))
    w = border_weight_map(mask, 10.0, 4.0)
    np.testing.assert_allclose(w, _reference(mask, 10.0, 4.0), rtol=1e-5, atol=1e-5)


def test_instance_labels_separate_touching_objects() -> None:
    """Two squares meeting at a corner are one 8-connected object; instance labels make them two."""
    mask = np.zeros((32, 32), np.uint8)
    mask[4:16, 4:16] = 1
    mask[16:28, 16:28] = 1
    assert np.array_equal(border_weight_map(mask), class_balance_weights(mask))  # one component
    instances = ndimage.label(mask)[0]  # 4-connected: two labels
    assert instances.max() == 2
    w = border_weight_map(mask, 10.0, 5.0, instances=instances)
    wc = class_balance_weights(mask)
    assert w[15, 16] > wc[15, 16] + 5 and w[16, 15] > wc[16, 15] + 5  # beside the corner where they touch
    assert np.array_equal(w[mask > 0], wc[mask > 0])
    assert np.array_equal(BorderWeights(10.0, 5.0)(mask, instances), w)
    with pytest.raises(ValueError, match="differ in shape"):
        border_weight_map(mask, instances=instances[:-1])


def test_object_cap_keeps_the_largest_objects() -> None:
    mask = (_disc(20, 12, 9) | _disc(20, 34, 9) | _disc(44, 23, 4)).astype(np.uint8)
    labels = ndimage.label(mask, structure=np.ones((3, 3)))[0]
    assert labels.max() == 3
    capped = border_weight_map(mask, 10.0, 5.0, max_objects=2)
    smallest = np.argmin(np.bincount(labels.ravel())[1:]) + 1
    without = np.where(labels == smallest, 0, labels)  # same mask, the smallest object not an instance
    assert np.array_equal(capped, border_weight_map(mask, 10.0, 5.0, instances=without))
    assert not np.array_equal(capped, border_weight_map(mask, 10.0, 5.0))


# --------------------------------------------------------------------------- the loss


def _tiny() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    weight = torch.tensor([[[[1.0, 2.0], [3.0, 0.5]]]])
    return logits, target, weight


def _bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_loss_is_the_hand_computed_weighted_bce() -> None:
    logits, target, weight = _tiny()
    by_hand = (1.0 * _bce(2.0, 1) + 2.0 * _bce(-1.0, 0) + 3.0 * _bce(0.5, 0) + 0.5 * _bce(-3.0, 1)) / 4
    loss_fn = build_loss(TrainConfig(loss={"border_bce": 1.0}))
    assert loss_fn.takes_weight and not build_loss(TrainConfig()).takes_weight
    assert loss_fn(logits, target, weight=weight).item() == pytest.approx(by_hand, rel=1e-6)
    # (N, H, W) weights and targets, as the data loader gives them
    assert loss_fn(logits, target[:, 0].to(torch.uint8), weight=weight[:, 0]).item() == pytest.approx(by_hand, rel=1e-6)
    # without a weight map (validation) it is the plain BCE
    plain = sum(_bce(z, y) for z, y in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True)) / 4
    assert loss_fn(logits, target).item() == pytest.approx(plain, rel=1e-6)
    # in a weighted sum the other terms ignore the weight map
    combined = build_loss(TrainConfig(loss={"border_bce": 2.0, "dice": 1.0}))
    dice = build_loss(TrainConfig(loss={"dice": 1.0}))
    assert combined(logits, target, weight=weight).item() == pytest.approx(
        2 * by_hand + dice(logits, target).item(), rel=1e-6)
    assert dice(logits, target, weight=weight).item() == dice(logits, target).item()


def test_gradients_flow_through_the_weighted_loss() -> None:
    logits, target, weight = _tiny()
    logits.requires_grad_(True)
    build_loss(TrainConfig(loss={"border_bce": 1.0, "dice": 1.0}))(logits, target, weight=weight).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and (logits.grad != 0).all()
    # the BCE part alone: d/dz mean(w * bce) = w * (sigmoid(z) - y) / N
    z = logits.detach().clone().requires_grad_(True)
    BorderBCE()(z, target, weight).backward()
    torch.testing.assert_close(z.grad, weight * (torch.sigmoid(z.detach()) - target) / 4)


# --------------------------------------------------------------------------- data path and training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[pd.DataFrame, dict[str, Path]]:
    index, stores = make_tile_stores(tmp_path_factory.mktemp("stores"), n_slides=2, n_pos=4, n_tissue=1, n_glass=1)
    return index, stores


def test_needs_border_weights_only_for_border_bce() -> None:
    assert not needs_border_weights(TrainConfig())
    assert needs_border_weights(TrainConfig(loss={"border_bce": 1.0, "dice": 1.0}))
    assert not needs_border_weights(TrainConfig(loss={"border_bce": 0.0, "dice": 1.0}))
    assert needs_border_weights(TrainConfig(loss_finetune={"border_bce": 1.0}, finetune_from_epoch=2))


def test_default_dataset_items_are_unchanged_and_compute_no_weights(data, monkeypatch) -> None:
    index, stores = data
    augment = build_augment(AugmentConfig(shift_scale_rotate=1.0))
    calls = []
    real = losses.border_weight_map
    monkeypatch.setattr(losses, "border_weight_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = TileDataset(index, stores, augment)
    weighted = TileDataset(index, stores, augment, border=BorderWeights(10.0, 3.0))
    for row in range(len(index)):
        item = plain[(row, 100 + row)]
        assert len(item) == 2 and len(calls) == row  # the default: (image, mask), nothing computed
        image, mask, weight = weighted[(row, 100 + row)]  # same seed, same augmentation
        assert np.array_equal(image, item[0]) and np.array_equal(mask, item[1])
        # made from the augmented mask
        assert weight.dtype == np.float32 and np.array_equal(weight, real(mask, 10.0, 3.0))
    assert len(calls) == len(index)


def test_training_with_border_bce_writes_a_checkpoint(data, tmp_path, monkeypatch) -> None:
    index, stores = data
    seen: list[bool] = []
    real_forward = BorderBCE.forward

    def spy(self, logits, target, weight=None):
        seen.append(weight is not None and torch.is_grad_enabled())
        return real_forward(self, logits, target, weight)

    monkeypatch.setattr(BorderBCE, "forward", spy)
    config = small_config(epochs=1, folds=2, loss={"border_bce": 1.0, "dice": 1.0}, border_sigma=3.0)
    metrics = train_fold(index, stores, 0, tmp_path, config)
    assert metrics["epoch"].tolist() == [1]
    assert np.isfinite(metrics[["train_loss", "val_loss", "val_dice"]].to_numpy()).all()
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "last.pt").is_file()
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["config"]["train"]["loss"] == {"border_bce": 1.0, "dice": 1.0}
    assert ckpt["config"]["train"]["border_sigma"] == 3.0
    assert True in seen  # training batches carried weight maps
    assert seen[-1] is False  # validation (last) ran without: plain BCE, as before


# --------------------------------------------------------------------------- config


def test_config_keys_and_checks() -> None:
    cfg = load_config(None, {"train": {"loss": {"border_bce": 1.0, "dice": 1.0}}})
    assert (cfg.train.border_w0, cfg.train.border_sigma) == (10.0, 5.0)
    check_config(cfg)
    jsonschema.validate({"train": {"loss": {"border_bce": 1.0}, "border_w0": 0, "border_sigma": 0.5}}, SCHEMA)
    with pytest.raises(ConfigError, match="unknown loss.*border_bc"):
        check_config(load_config(None, {"train": {"loss": {"border_bc": 1.0}}}))
    for bad in ({"border_w0": -1.0}, {"border_sigma": 0.0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"train": bad}, SCHEMA)
        with pytest.raises(ConfigError, match="border_w0 must be >= 0 and train.border_sigma > 0"):
            check_config(load_config(None, {"train": bad}))
