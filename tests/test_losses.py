"""Losses: each term on perfect / easy predictions, weighted sums, the fine-tune schedule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.losses import LOSSES, build_loss, check_loss_schedule, uses_finetune


def _target(seed: int = 0) -> torch.Tensor:
    """(4, 1, 32, 32) 0/1 target with a square per image (and one empty image)."""
    y = torch.zeros(4, 1, 32, 32)
    for i, (a, b) in enumerate([(4, 20), (10, 30), (0, 8)]):
        y[i, 0, a:b, a:b] = 1
    return y


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_is_zero_on_a_perfect_prediction(name: str) -> None:
    y = _target()
    loss = build_loss(TrainConfig(loss={name: 1.0}, pos_weight=3.0))
    perfect = (y * 2 - 1) * 30.0  # confident, correct logits
    wrong = -perfect
    assert loss(perfect, y).item() == pytest.approx(0.0, abs=1e-4)
    assert loss(wrong, y).item() > 0.5


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_decreases_on_an_easy_batch(name: str) -> None:
    y = _target()
    loss_fn = build_loss(TrainConfig(loss={name: 1.0}, pos_weight=2.0))
    logits = torch.zeros_like(y, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    first = loss_fn(logits, y).item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
    assert loss_fn(logits, y).item() < 0.5 * first
    assert ((logits > 0) == (y > 0)).all()  # and the prediction became right


def test_weighted_sum_and_shapes() -> None:
    y = _target()
    logits = torch.randn_like(y)
    combined = build_loss(TrainConfig(loss={"bce": 0.5, "dice": 2.0, "focal": 0.0}))
    expected = 0.5 * build_loss(TrainConfig(loss={"bce": 1.0}))(logits, y) + 2.0 * build_loss(
        TrainConfig(loss={"dice": 1.0})
    )(logits, y)
    assert combined(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(combined.terms) == {"bce", "dice"}  # zero weights are skipped
    # (N, H, W) targets and uint8 masks work too; bf16 logits are computed in float32
    assert combined(logits, y[:, 0].to(torch.uint8)).item() == pytest.approx(expected.item(), rel=1e-6)
    assert combined(logits.bfloat16(), y).dtype == torch.float32


def test_weighted_bce_weights_the_positive_class() -> None:
    y = _target()
    logits = torch.zeros_like(y)
    plain = build_loss(TrainConfig(loss={"weighted_bce": 1.0}, pos_weight=1.0))(logits, y)
    heavy = build_loss(TrainConfig(loss={"weighted_bce": 1.0}, pos_weight=5.0))(logits, y)
    bce = build_loss(TrainConfig(loss={"bce": 1.0}))(logits, y)
    assert plain.item() == pytest.approx(bce.item(), rel=1e-6)
    pos = y.mean().item()
    # each positive pixel's term is multiplied by 5
    assert heavy.item() == pytest.approx(bce.item() * (1 - pos + 5 * pos), rel=1e-5)


@pytest.mark.parametrize(
    ("loss", "words"),
    [({"dice": 1.0, "tversky": 1.0}, "unknown loss.*tversky"), ({}, "no loss terms"),
     ({"bce": 0.0}, "at least one > 0"), ({"bce": -1.0}, "weights must be >= 0")],
)
def test_bad_loss_config(loss: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        build_loss(TrainConfig(loss=loss))


def test_finetune_schedule() -> None:
    cfg = TrainConfig(loss={"bce": 1.0}, loss_finetune={"dice": 1.0}, finetune_from_epoch=3)
    check_loss_schedule(cfg)
    assert [uses_finetune(cfg, e) for e in (1, 2, 3, 4)] == [False, False, True, True]
    assert set(build_loss(cfg, finetune=True).terms) == {"dice"}
    assert not uses_finetune(TrainConfig(), 10)
    with pytest.raises(ConfigError, match="finetune_from_epoch"):
        check_loss_schedule(dataclasses.replace(cfg, finetune_from_epoch=None))
    with pytest.raises(ConfigError, match="loss_finetune: unknown"):
        check_loss_schedule(dataclasses.replace(cfg, loss_finetune={"dcie": 1.0}))
