"""Segmentation losses on logits: weighted sums of smp's binary losses and U-Net's border-weighted BCE.

``TrainConfig.loss`` is a mapping ``name -> weight`` (e.g. ``{"bce": 1, "dice": 1}``);
``TrainConfig.loss_finetune`` optionally replaces it from epoch
``TrainConfig.finetune_from_epoch`` on ("BCE first, Dice to fine-tune").

``border_bce`` is the weighted cross-entropy of the U-Net paper (Ronneberger et al. 2015,
https://arxiv.org/abs/1505.04597, eq. 2): a per-pixel weight map, made per tile by the
training data set after augmentation (:func:`border_weight_map`, numpy/scipy, in the
data-loader workers), balances the classes and stresses the background between nearby
objects. The data set computes it only when a loss term needs it (:func:`needs_border_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segmentation_models_pytorch import losses as smp_losses
from torch import Tensor, nn

from pipeline.config import TrainConfig
from pipeline.config_checks import check_loss_schedule, check_loss_terms
from pipeline.errors import ConfigError

LossFactory = Callable[[TrainConfig], nn.Module]

__all__ = ["LOSSES", "BorderBCE", "BorderWeights", "WeightedLoss", "border_weight_map", "build_loss",
           "check_loss_schedule", "class_balance_weights", "needs_border_weights", "uses_finetune"]

# --------------------------------------------------------------------------- U-Net border weights

# the loss terms that take the per-pixel weight map (the data set makes it only for these)
WEIGHT_MAP_LOSSES = ("border_bce",)

# Class balancing: a class's frequency in a tile is taken as at least this, so a sliver of
# glomerulus cut by the tile edge weighs at most 0.5 / 0.05 = 10 per pixel, not thousands.
MIN_CLASS_FREQ = 0.05
# The border term is cut to 0 where d1 + d2 > BORDER_REACH * sigma (it is below
# exp(-REACH^2 / 2) = 1.1 % of w0 there); this bounds each object's distance transform to
# its bounding box grown by that reach instead of the whole tile.
BORDER_REACH = 3.0
# At most this many objects of a tile enter the border term (the largest of those with a
# neighbour within reach): each costs one windowed distance transform, so a pathological
# mask (hundreds of fragments) cannot stall a data-loader worker. Glomeruli at the model's
# resolution are a handful per tile, far below it.
MAX_BORDER_OBJECTS = 32
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as the tiles stage counts objects


def class_balance_weights(mask: np.ndarray) -> np.ndarray:
    """``w_c``: float32 ``1 / (C * freq(class))`` per pixel, ``C`` the classes present in the tile.

    With both classes present: ``0.5 / freq`` (each class carries half of the tile's total
    weight), the frequency taken as at least :data:`MIN_CLASS_FREQ` (weights <= 10). A tile of
    one class only is all ones. Either way the mean over the tile is 1 (below 1 only where the
    floor applies), so the loss keeps plain BCE's scale and every tile counts alike.
    """
    fg = np.asarray(mask) > 0
    p = float(fg.mean()) if fg.size else 0.0
    if p in (0.0, 1.0):
        return np.ones(fg.shape, np.float32)
    w_fg, w_bg = 0.5 / max(p, MIN_CLASS_FREQ), 0.5 / max(1.0 - p, MIN_CLASS_FREQ)
    return np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)


def _two_nearest(labels: np.ndarray, reach: float, max_objects: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(d1, d2): distances to the nearest and second-nearest object, exact wherever <= ``reach``.

    Objects are the labels > 0. Only objects with another one within ``reach`` (bounding
    boxes closer than that) can make d1 + d2 <= reach, so only those count, at most
    ``max_objects`` (the largest). Each one's Euclidean distance transform is taken on its
    bounding box grown by ``reach`` (exact there: all its pixels are inside) and folded into
    running minima, so memory is two (H, W) maps whatever the number of objects; elsewhere
    the distances are inf. None when fewer than 2 objects count.
    """
    boxes = ndimage.find_objects(labels)
    ids = np.array([k + 1 for k, box in enumerate(boxes) if box is not None], np.int64)
    if len(ids) < 2:
        return None
    lo = np.array([[boxes[k - 1][0].start, boxes[k - 1][1].start] for k in ids], float)
    hi = np.array([[boxes[k - 1][0].stop - 1, boxes[k - 1][1].stop - 1] for k in ids], float)
    gap = np.maximum(0.0, np.maximum(lo[:, None] - hi[None], lo[None] - hi[:, None]))  # (n, n, 2) per axis
    near = np.hypot(gap[..., 0], gap[..., 1]) <= reach
    np.fill_diagonal(near, False)
    ids = ids[near.any(axis=1)]
    if len(ids) < 2:
        return None
    if len(ids) > max_objects:
        sizes = ndimage.sum_labels(np.ones(labels.shape, np.int32), labels, ids)
        ids = ids[np.argsort(-sizes, kind="stable")[:max_objects]]
    h, w = labels.shape
    r = int(math.ceil(reach))
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for k in ids:
        ys, xs = boxes[k - 1]
        win = (slice(max(ys.start - r, 0), min(ys.stop + r, h)), slice(max(xs.start - r, 0), min(xs.stop + r, w)))
        d = ndimage.distance_transform_edt(labels[win] != k).astype(np.float32)
        a, b = d1[win], d2[win]  # views: updated in place
        np.minimum(b, np.maximum(a, d), out=b)
        np.minimum(a, d, out=a)
    return d1, d2


def border_weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    instances: np.ndarray | None = None,
    max_objects: int = MAX_BORDER_OBJECTS,
) -> np.ndarray:
    """U-Net's weight map (its eq. 2): ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``, float32 (H, W).

    ``w_c`` balances the classes (:func:`class_balance_weights`: ``1 / (C * freq)`` per tile,
    not the paper's unspecified choice). The border term applies to background pixels only,
    as in the paper (the gaps between touching objects); ``d1``, ``d2`` are the distances (px
    at the tile's resolution, the model's input) to the nearest and second-nearest object.
    Objects are ``instances`` (an int label image, 0 = background) when given (e.g. per-object
    masks), else the 8-connected components of ``mask``. No border term with fewer than 2
    objects, and none where ``d1 + d2 > BORDER_REACH * sigma`` (cut, < 1.1 % of w0); at most
    ``max_objects`` objects take part (see :data:`MAX_BORDER_OBJECTS`).
    """
    fg = np.asarray(mask) > 0
    weights = class_balance_weights(fg)
    if w0 <= 0 or not fg.any():
        return weights
    if sigma <= 0:
        raise ValueError(f"border_weight_map: sigma must be > 0, got {sigma}")
    if instances is None:
        labels, _ = ndimage.label(fg, structure=_EIGHT)
    else:
        labels = np.asarray(instances)
        if labels.shape != fg.shape:
            raise ValueError(f"border_weight_map: instances {labels.shape} and mask {fg.shape} differ in shape")
        labels = labels.astype(np.int64, copy=False)
    reach = BORDER_REACH * float(sigma)
    nearest = _two_nearest(labels, reach, max_objects)
    if nearest is None:
        return weights
    total = nearest[0] + nearest[1]
    where = ~fg & (total <= reach)
    weights[where] += np.float32(w0) * np.exp(-np.square(total[where]) / np.float32(2.0 * sigma * sigma))
    return weights


@dataclass(frozen=True)
class BorderWeights:
    """The weight map of one tile as the training data set makes it (after augmentation); picklable."""

    w0: float = 10.0
    sigma: float = 5.0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> BorderWeights:
        return cls(float(cfg.border_w0), float(cfg.border_sigma))

    def __call__(self, mask: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
        return border_weight_map(mask, self.w0, self.sigma, instances)


def needs_border_weights(cfg: TrainConfig) -> bool:
    """Whether a loss term of ``loss`` or ``loss_finetune`` (with a weight > 0) takes the weight map."""
    schedules = [cfg.loss] + ([cfg.loss_finetune] if cfg.loss_finetune is not None else [])
    return any(w > 0 for terms in schedules for name, w in terms.items() if name in WEIGHT_MAP_LOSSES)


class BorderBCE(nn.Module):
    """Weighted BCE on logits: the mean over pixels of ``weight * BCE`` (the paper's sum, per pixel).

    ``weight`` is the map of :func:`border_weight_map` (same shape as ``logits``). Without one
    (validation, which computes none) it is the plain BCE, i.e. a weight of 1 everywhere.
    """

    takes_weight = True

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


# --------------------------------------------------------------------------- the registry

LOSSES: dict[str, LossFactory] = {
    "bce": lambda cfg: smp_losses.SoftBCEWithLogitsLoss(),
    "weighted_bce": lambda cfg: smp_losses.SoftBCEWithLogitsLoss(
        pos_weight=torch.tensor(float(cfg.pos_weight))
    ),
    "dice": lambda cfg: smp_losses.DiceLoss("binary", from_logits=True),
    "focal": lambda cfg: smp_losses.FocalLoss("binary", gamma=cfg.focal_gamma),
    "lovasz": lambda cfg: smp_losses.LovaszLoss("binary", per_image=False),
    "border_bce": lambda cfg: BorderBCE(),
}


class WeightedLoss(nn.Module):
    """``sum(weight * loss(logits, target))`` over the configured terms.

    ``logits``: (N, 1, H, W) or (N, H, W); ``target``: the same shape or (N, H, W),
    0/1 of any dtype. Computed in float32 (safe under autocast). ``weight`` (optional, the
    per-pixel map of :func:`border_weight_map`, shaped like ``target``) goes to the terms that
    take one (``border_bce``); the other terms ignore it.
    """

    def __init__(self, terms: Mapping[str, float], cfg: TrainConfig) -> None:
        super().__init__()
        self.weights = {name: float(w) for name, w in terms.items() if w != 0}
        self.terms = nn.ModuleDict({name: LOSSES[name](cfg) for name in self.weights})

    @property
    def takes_weight(self) -> bool:
        """Whether a term uses the per-pixel weight map."""
        return any(getattr(loss, "takes_weight", False) for loss in self.terms.values())

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if logits.ndim == 3:
            logits = logits.unsqueeze(1)
        logits = logits.float()
        target = target.reshape(logits.shape).to(logits.dtype)
        if weight is not None:
            weight = weight.reshape(logits.shape).to(logits.dtype)
        total = logits.new_zeros(())
        for name, loss in self.terms.items():
            if getattr(loss, "takes_weight", False):
                total = total + self.weights[name] * loss(logits, target, weight)
            else:
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
