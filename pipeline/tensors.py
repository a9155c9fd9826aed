"""uint8 images to normalised model input: the one normalisation training and prediction share,
so they cannot drift apart.

Kept apart from :mod:`pipeline.augment` so prediction does not import albumentations (0.5-0.9 s
of every predict job, paid inside the timed window loop when it was imported there).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor


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


__all__ = ["to_tensor"]
