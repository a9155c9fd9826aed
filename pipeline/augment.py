"""Training augmentations (albumentations 2).

Augmentations work on uint8 HWC tiles and their masks; normalisation is *not* part of them:
:func:`pipeline.tensors.to_tensor` does it (on the device, after transfer), for training and
prediction alike.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

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
