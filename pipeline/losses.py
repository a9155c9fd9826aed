"""Segmentation losses on logits: weighted sums of smp's binary losses.

``TrainConfig.loss`` is a mapping ``name -> weight`` (e.g. ``{"bce": 1, "dice": 1}``);
``TrainConfig.loss_finetune`` optionally replaces it from epoch
``TrainConfig.finetune_from_epoch`` on ("BCE first, Dice to fine-tune").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import Tensor, nn

from pipeline.config import TrainConfig
from pipeline.config_checks import check_loss_schedule, check_loss_terms
from pipeline.errors import ConfigError

LossFactory = Callable[[TrainConfig], nn.Module]

__all__ = ["LOSSES", "WeightedLoss", "build_loss", "check_loss_schedule", "uses_finetune"]

LOSSES: dict[str, LossFactory] = {
    "bce": lambda cfg: smp_losses.SoftBCEWithLogitsLoss(),
    "weighted_bce": lambda cfg: smp_losses.SoftBCEWithLogitsLoss(
        pos_weight=torch.tensor(float(cfg.pos_weight))
    ),
    "dice": lambda cfg: smp_losses.DiceLoss("binary", from_logits=True),
    "focal": lambda cfg: smp_losses.FocalLoss("binary", gamma=cfg.focal_gamma),
    "lovasz": lambda cfg: smp_losses.LovaszLoss("binary", per_image=False),
}


class WeightedLoss(nn.Module):
    """``sum(weight * loss(logits, target))`` over the configured terms.

    ``logits``: (N, 1, H, W) or (N, H, W); ``target``: the same shape or (N, H, W),
    0/1 of any dtype. Computed in float32 (safe under autocast).
    """

    def __init__(self, terms: Mapping[str, float], cfg: TrainConfig) -> None:
        super().__init__()
        self.weights = {name: float(w) for name, w in terms.items() if w != 0}
        self.terms = nn.ModuleDict({name: LOSSES[name](cfg) for name in self.weights})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim == 3:
            logits = logits.unsqueeze(1)
        logits = logits.float()
        target = target.reshape(logits.shape).to(logits.dtype)
        total = logits.new_zeros(())
        for name, loss in self.terms.items():
            total = total + self.weights[name] * loss(logits, target)
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in self.weights.items())


def build_loss(cfg: TrainConfig, finetune: bool = False) -> WeightedLoss:
    """The weighted loss of ``cfg.loss`` (or of ``cfg.loss_finetune`` when ``finetune``)."""
    if finetune:
        if cfg.loss_finetune is None:
            raise ConfigError(None, "train.loss_finetune: not set")
        check_loss_terms(cfg.loss_finetune, "loss_finetune")
        return WeightedLoss(cfg.loss_finetune, cfg)
    check_loss_terms(cfg.loss, "loss")
    return WeightedLoss(cfg.loss, cfg)


def uses_finetune(cfg: TrainConfig, epoch: int) -> bool:
    """Whether 1-based ``epoch`` trains with ``loss_finetune`` instead of ``loss``."""
    return (
        cfg.loss_finetune is not None
        and cfg.finetune_from_epoch is not None
        and epoch >= cfg.finetune_from_epoch
    )
