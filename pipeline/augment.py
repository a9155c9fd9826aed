"""Training augmentations (albumentations 2) and the uint8 -> tensor normalisation.

Augmentations work on uint8 HWC tiles and their masks; normalisation is *not*
part of them: :func:`to_tensor` does it (on the device, after transfer) and is the
one function both training and prediction use, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from pipeline.config import AugmentConfig


def build_augment(cfg: AugmentConfig) -> A.Compose:
    """Flips, rot90, affine, colour, noise, blur, CLAHE, stain/scanner shifts with the configured probabilities.

    Families with probability 0 are left out (no cost). Geometric transforms move
    image and mask together (mask: nearest neighbour); photometric ones touch the
    image only. Seed it per sample with :func:`seed_augment` for reproducibility.
    """
    t: list[A.BasicTransform | A.BaseCompose] = []
    if cfg.flip > 0:
        t += [A.HorizontalFlip(p=cfg.flip), A.VerticalFlip(p=cfg.flip)]
    if cfg.rot90 > 0:
        t.append(A.RandomRotate90(p=cfg.rot90))
    if cfg.shift_scale_rotate > 0:
        # albumentations 2: Affine replaces ShiftScaleRotate; reflect borders (no black corners)
        t.append(
            A.Affine(
                translate_percent=(-0.0625, 0.0625),
                scale=(0.9, 1.1),
                rotate=(-45, 45),
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.shift_scale_rotate,
            )
        )
    if cfg.color > 0:
        t.append(
            A.OneOf(
                [
                    A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=1.0),
                    A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
                    A.RandomGamma(gamma_limit=(80, 120), p=1.0),
                ],
                p=cfg.color,
            )
        )
    if cfg.noise > 0:
        t.append(A.GaussNoise(std_range=(0.01, 0.05), p=cfg.noise))  # std as a fraction of 255
    if cfg.blur > 0:
        t.append(A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=cfg.blur))
    if cfg.clahe > 0:
        t.append(A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=cfg.clahe))
    t += scanner_shifts(cfg)
    return A.Compose(t)


def scanner_shifts(cfg: AugmentConfig) -> list[A.BasicTransform]:
    """What another lab's stain, camera and scanner do to a slide (``bench/shift.py`` measures them).

    HED stain jitter (random stain-matrix presets, concentrations x0.7-1.3), per-channel
    gains (white balance; ``MultiplicativeNoise`` with one factor per channel for the whole
    tile), exposure (gamma and brightness, mostly darker) and JPEG re-compression.
    """
    t: list[A.BasicTransform] = []
    if cfg.stain > 0:
        t.append(A.HEStain(method="random_preset", intensity_scale_range=(0.7, 1.3),
                           intensity_shift_range=(-0.2, 0.2), augment_background=False, p=cfg.stain))
    if cfg.white_balance > 0:
        t.append(A.MultiplicativeNoise(multiplier=(0.8, 1.2), per_channel=True, elementwise=False,
                                       p=cfg.white_balance))
    if cfg.exposure > 0:
        t.append(A.Sequential([A.RandomGamma(gamma_limit=(60, 160), p=1.0),
                               A.RandomBrightnessContrast(brightness_limit=(-0.4, 0.1), contrast_limit=0.1, p=1.0)],
                              p=cfg.exposure))
    if cfg.jpeg > 0:
        t.append(A.ImageCompression(compression_type="jpeg", quality_range=(50, 95), p=cfg.jpeg))
    return t


def seed_augment(augment: A.BaseCompose, seed: int) -> None:
    """Give every transform inside ``augment`` its own generator derived from ``seed``.

    albumentations' own ``set_random_seed`` hands the *same* seed to every transform,
    which correlates their "apply?" draws; this derives distinct child seeds.
    """
    children = np.random.SeedSequence(seed).generate_state(2 + len(augment.transforms))
    augment.seed = int(children[0])
    augment.random_generator = np.random.default_rng(int(children[0]))
    augment.py_random.seed(int(children[1]))
    for child_seed, transform in zip(children[2:], augment.transforms, strict=True):
        if isinstance(transform, A.BaseCompose):
            seed_augment(transform, int(child_seed))
        else:
            transform.set_random_seed(int(child_seed))


def to_tensor(
    images_uint8_nhwc: np.ndarray | Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> Tensor:
    """uint8 (N, H, W, 3) (or one (H, W, 3)) -> float32 (N, 3, H, W), ``(x/255 - mean)/std``.

    ``mean`` / ``std`` are per channel on the 0..1 scale (``ModelConfig``). Moving
    the uint8 batch first and normalising on ``device`` keeps transfers 4x smaller.
    ``channels_last``: the result in channels-last memory (what convolutions run
    fastest on, on CUDA and with EfficientNet-style encoders on the CPU); on the CPU
    it is made in one pass through a 256-entry table per channel, with the same values.
    """
    x = torch.as_tensor(images_uint8_nhwc)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"to_tensor: expected (N, H, W, 3) images, got shape {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0)
    shift = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    if channels_last and x.device.type == "cpu" and x.dtype == torch.uint8 and x.numel():
        return _lookup_nhwc(x, shift, scale).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels last
    # one strided copy into contiguous NCHW float, then in-place arithmetic on contiguous
    # memory: 4x faster than arithmetic on the permuted view (it dominated prediction's
    # data path with a cheap model)
    out = torch.empty((x.shape[0], 3, x.shape[1], x.shape[2]), dtype=torch.float32, device=x.device)
    out.copy_(x.permute(0, 3, 1, 2))
    out = out.sub_(shift).mul_(scale)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _lookup_nhwc(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """uint8 NHWC -> float32 NHWC through a per-channel table of ``(v - shift) * scale``:
    bit-equal to the arithmetic (the table is that arithmetic on 0..255), one pass (cv2.LUT)."""
    values = torch.arange(256, dtype=torch.float32).view(256, 1, 1, 1).expand(256, 3, 1, 1)
    table = (values - shift.view(1, 3, 1, 1)).mul_(scale.view(1, 3, 1, 1)).reshape(256, 1, 3)
    n, h, w, _ = x.shape
    src = np.ascontiguousarray(x.numpy()).reshape(n * h, w, 3)
    out = np.empty((n * h, w, 3), np.float32)
    cv2.LUT(src, table.numpy(), dst=out)
    return torch.from_numpy(out).view(n, h, w, 3)
