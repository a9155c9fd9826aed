"""Training tiles as a PyTorch dataset: read from the tile stores, normalised, augmented.

A tile is normalised exactly as prediction normalises a window (the slide's colour and input
statistics, from its store, never the tile's own), then augmented with a per-sample seed the
sampler derives from (``train.seed``, epoch), so an epoch's batches are the same whatever the
number of data-loader workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline import input_norm as inorm
from pipeline import stain
from pipeline.augment import seed_augment
from pipeline.errors import DataError
from pipeline.input_norm import InputNorm
from pipeline.losses import BorderWeights
from pipeline.stain import ColourNormaliser
from pipeline.tiles import open_tile_store, read_colour_stats, read_input_stats

INDEX_COLUMNS = ("slide", "tile")


class TileDataset(Dataset):
    """Tiles of a tile index read from per-slide Zarr stores, optionally augmented.

    Items are ``(image uint8 (S, S, 3), mask uint8 (S, S))``. A key is a row number
    of the index, or ``(row, seed)`` to augment with a per-sample seed. Stores are
    opened lazily in each process (safe with data-loader workers). ``colour`` normalises
    each tile with its slide's statistics (from the store) *before* augmentation, as
    prediction normalises a window before the model sees it. ``input_norm`` (the model's
    input normalisation, :mod:`pipeline.input_norm`) likewise uses the slide's statistics
    from the store, never the tile's: ``invert_dark`` inverts every tile of a dark slide
    before augmentation; ``per_image`` standardises each tile *after* augmentation and the
    item's image is then float32 (S, S, 3), already what the model sees (no model mean/std).
    ``border`` (only for the ``border_bce`` loss) adds a third item, the tile's float32 (S, S)
    U-Net weight map made from the *augmented* mask (:func:`pipeline.losses.border_weight_map`);
    without it nothing is computed and items stay ``(image, mask)``.
    """

    def __init__(
        self,
        index: pd.DataFrame,
        stores: dict[str, Path],
        augment: A.Compose | None = None,
        colour: ColourNormaliser = stain.NONE,
        input_norm: InputNorm = inorm.NONE,
        border: BorderWeights | None = None,
    ) -> None:
        missing_cols = [c for c in INDEX_COLUMNS if c not in index.columns]
        if missing_cols:
            raise DataError(None, f"tile index lacks column(s) {', '.join(missing_cols)}")
        self.slides = index["slide"].astype(str).to_numpy()
        self.tiles = index["tile"].to_numpy(dtype=np.int64)
        self.augment = augment
        self.paths: dict[str, Path] = {}
        sizes = set()
        for slide in dict.fromkeys(self.slides):
            if slide not in stores:
                raise DataError(None, f"tile index names slide {slide!r} but no tile store was given for it")
            path = Path(stores[slide])
            images, _ = open_tile_store(path)
            rows = self.tiles[self.slides == slide]
            if len(rows) and (rows.min() < 0 or rows.max() >= images.shape[0]):
                raise DataError(
                    path, f"tile index refers to tile {rows.max()} but the store has {images.shape[0]}"
                )
            if images.shape[-1] != 3:
                raise DataError(path, f"tile store images have {images.shape[-1]} channels, expected 3 (RGB)")
            sizes.add(tuple(images.shape[1:3]))
            self.paths[slide] = path
        if len(sizes) > 1:
            raise DataError(None, f"tile stores have different tile sizes {sorted(sizes)}")
        self.tile_shape: tuple[int, int] | None = sizes.pop() if sizes else None
        self.colour = colour
        self.slide_colour = {s: read_colour_stats(p) for s, p in self.paths.items()} if colour.active else {}
        self.input_norm = input_norm
        self.slide_input = {s: read_input_stats(p) for s, p in self.paths.items()} if input_norm.active else {}
        self.border = border
        self._arrays: dict[str, tuple[zarr.Array, zarr.Array]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # reopen in the worker
        return state

    def __len__(self) -> int:
        return len(self.tiles)

    def read(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        slide = self.slides[row]
        if slide not in self._arrays:
            self._arrays[slide] = open_tile_store(self.paths[slide])
        images, masks = self._arrays[slide]
        tile = int(self.tiles[row])
        image = np.asarray(images[tile])
        if self.colour.active:
            image = self.colour.apply(image, self.slide_colour[slide])
        if self.input_norm.active:
            pixel_map = self.input_norm.pixel_map(self.slide_input[slide])  # the slide's decision, every tile alike
            if pixel_map is not None:
                image = pixel_map(image)
        return image, np.asarray(masks[tile])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, ...]:
        row, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.read(int(row))
        if self.augment is not None:
            if seed is not None:
                seed_augment(self.augment, int(seed))
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.input_norm.method == "per_image":
            image = self.input_norm.standardise(image, self.slide_input[self.slides[int(row)]])
        if self.border is not None:  # objects: the augmented mask's components (per-object masks: instances=)
            return np.ascontiguousarray(image), np.ascontiguousarray(mask), self.border(mask)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class EpochSampler(Sampler):
    """Yields ``(row, augmentation seed)``: a fresh permutation per epoch from (seed, epoch).

    Lives in the main process, so ``set_epoch`` works with persistent workers too.
    """

    def __init__(self, n: int, seed: int, max_items: int | None = None) -> None:
        self.n, self.seed = n, seed
        self.max_items = n if max_items is None else min(n, max_items)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.max_items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)[: self.max_items]
        seeds = rng.integers(0, 2**31 - 1, size=len(order))
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


def _worker_init(worker_id: int) -> None:
    """Seed numpy / random in a worker from torch's per-worker seed.

    (Augmentations are seeded per sample anyway.) Do not call cv2.setNumThreads
    here: after the parent used OpenCV's thread pool it deadlocks in a forked child.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: TileDataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    sampler: Sampler | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with pinned memory and persistent workers on CUDA, plain on CPU."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
    )


__all__ = ["INDEX_COLUMNS", "EpochSampler", "TileDataset", "make_loader"]
