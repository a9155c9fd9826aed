"""``predict.batch_size: auto``: the largest batch of windows the device holds, found once per slide.

Why: a GPU sits idle between small batches (each launch, copy and sync has a fixed cost), and
the right size depends on the model, the window and the card, which a config file cannot
know. On CUDA the real models run one forward pass (inference mode, the run's autocast and
memory format) on growing batches of blank windows; the largest whose peak memory stays under
:data:`MEMORY_FRACTION` of the card wins (an out-of-memory error counts as "does not fit").
On a CPU larger batches buy nothing and cost memory, so ``auto`` is :data:`CPU_BATCH`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.progress import get_logger

if TYPE_CHECKING:  # torch only where a model runs: the config checks import this module at planning
    import torch

log = get_logger(__name__)

AUTO = "auto"
CPU_BATCH = 8
FIRST, CAP = 8, 256  # the search doubles from FIRST and stops at CAP (a few windows' worth of reads)
MEMORY_FRACTION = 0.7  # of the card's memory: leaves room for the staging buffers and other processes


def check_setting(value: int | str) -> None:
    """``predict.batch_size`` is a positive integer or "auto"; ConfigError otherwise."""
    if isinstance(value, str):
        if value != AUTO:
            raise ConfigError(None, f"predict.batch_size: a positive integer or {AUTO!r}, got {value!r}")
    elif isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ConfigError(None, f"predict.batch_size: must be a positive integer, got {value!r}")


def largest_fitting(fits: Callable[[int], bool], first: int = FIRST, cap: int = CAP) -> int:
    """The largest batch size ``fits`` accepts: doubling from ``first`` up to ``cap``, halving
    below ``first`` when even that fails, and 1 when nothing does (the model then runs one
    window at a time and reports its own out-of-memory error)."""
    size = first
    if not fits(size):
        while size > 1:
            size //= 2
            if fits(size):
                return size
        return 1
    while size * 2 <= cap and fits(size * 2):
        size *= 2
    return size


def cuda_fits(
    models: Sequence[torch.nn.Module], out_size: int, device: torch.device, amp: bool, channels_last: bool,
    fraction: float = MEMORY_FRACTION,
) -> Callable[[int], bool]:
    """A probe for :func:`largest_fitting`: does one forward pass of ``n`` windows stay under
    ``fraction`` of the card's memory? (Runs the models on blank windows; CUDA only.)"""
    import torch

    from pipeline.inference import autocast_for

    total = torch.cuda.get_device_properties(device).total_memory

    def fits(n: int) -> bool:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.zeros((n, 3, out_size, out_size), device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast_for(device, amp):
                for model in models:
                    model(x)
            torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated(device) <= fraction * total

    return fits


def resolve_batch_size(
    requested: int | str, models: Sequence[torch.nn.Module], out_size: int, device: torch.device,
    amp: bool = True, channels_last: bool = True,
) -> int:
    """``requested`` when it is a number; for "auto" the largest batch the device holds."""
    check_setting(requested)
    if requested != AUTO:
        return int(requested)
    if device.type != "cuda":
        return CPU_BATCH
    size = largest_fitting(cuda_fits(models, out_size, device, amp, channels_last))
    log.info("predict.batch_size auto: %d windows of %d px per forward pass on %s", size, out_size, device)
    return size


__all__ = ["AUTO", "CPU_BATCH", "check_setting", "cuda_fits", "largest_fitting", "resolve_batch_size"]
