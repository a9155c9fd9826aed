"""The slide at model resolution, decoded and area-reduced once per block, cut into windows.

Why: prediction windows overlap (at overlap 0.5 each slide pixel lies in ~4 windows), and
reading each window at full resolution and reducing it on its own decodes and reduces every
pixel ~4 times; that, not the model, set the pace of whole-slide prediction on a CPU node
and leaves a GPU waiting. Here the slide is cut into blocks on a fixed lattice (full-res
sides multiples of the model scale and, where that stays small, of the TIFF tile), each
block is decoded once, area-reduced once and colour-normalised once, and every window is
cut from the reduced blocks. Window positions are multiples of the scale, so a window holds
exactly the pixels that reading and reducing it alone gives (exact block means; pointwise
normalisation), and the consensus map is unchanged.

Windows must be requested in row-major order (the prediction grid's order): a request for
a window starting at row ``y0`` frees every block that ends above ``y0``, so memory stays at
about one window height plus one block of reduced rows across the slide (a 37000 px wide
slide at scale 3: ~25 MB), whatever the slide's height.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future

import numpy as np

from pipeline.resize import resize_area

#: Block sides (full-res px) aim at this size: big enough that per-read overhead vanishes,
#: small enough that blocks outside the tissue windows are not decoded.
TARGET_BLOCK = 1024
#: Aligning blocks to the TIFF tiles needs lcm(scale, tile) px; beyond this it is not worth it.
MAX_ALIGNED_BLOCK = 4096


def block_side(scale: int, segment: int, target: int = TARGET_BLOCK) -> int:
    """A block side (full-res px): a multiple of ``scale`` and, when affordable, of ``segment``.

    Aligned to the tile lattice, no tile is decoded by two blocks. A strip layout (one
    segment spans the whole width) is handled by the caller: its blocks span the width.
    """
    scale, segment = max(1, int(scale)), max(1, int(segment))
    unit = scale * segment // math.gcd(scale, segment)
    if unit > MAX_ALIGNED_BLOCK:
        unit = scale  # unaligned: edge tiles decoded twice, still far fewer than per window
    return unit * max(1, round(target / unit))


def read_window(reader: object, y0: int, x0: int, size: int, out_size: int) -> np.ndarray:
    """One (size, size) window at (y0, x0) on its own (glass outside the slide), area-resized to ``out_size``.

    What a window cut from :class:`ReducedSlide` equals; the path for windows off the lattice.
    ``reader.read`` must be thread-safe (both backends are).
    """
    return resize_area(reader.read(int(y0), int(x0), size, size, fill=255), out_size)  # type: ignore[attr-defined]


def _segments(reader: object) -> tuple[int, int]:
    """(rows, cols) of the reader's level-0 tiles or strips; 512 when it cannot say."""
    try:
        return int(reader._segment_rows(0)), int(reader._segment_cols(0))  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError, IndexError):
        return 512, 512


class ReducedSlide:
    """Windows of a slide at model resolution, each slide block decoded and reduced once.

    ``reader`` needs ``shape`` and a thread-safe ``read(y0, x0, h, w, fill=255)`` (both
    slide backends; parts outside the slide read as glass). Blocks are decoded by ``pool``;
    ``transform`` maps each reduced uint8 block (the slide's colour normalisation, which
    is pointwise). :meth:`request` is called from one thread, in row-major window order.
    """

    def __init__(
        self,
        reader: object,
        scale: int,
        pool: Executor,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        block: tuple[int, int] | None = None,
    ) -> None:
        self.reader = reader
        self.scale = int(scale)
        self.pool = pool
        self.transform = transform
        if block is None:
            seg_h, seg_w = _segments(reader)
            height, width = (int(n) for n in reader.shape)  # type: ignore[attr-defined]
            full_width = -(-width // self.scale) * self.scale
            block_w = full_width if seg_w >= width else block_side(self.scale, seg_w)  # strips: whole rows
            block = (block_side(self.scale, seg_h), block_w)
        self.block_h, self.block_w = (int(b) for b in block)
        if self.block_h % self.scale or self.block_w % self.scale:
            raise ValueError(f"block {block} is not a multiple of the scale {self.scale}")
        self._blocks: dict[tuple[int, int], Future[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.blocks_read = 0
        self.read_s = 0.0  # summed over the pool's threads

    def _load(self, i: int, j: int) -> np.ndarray:
        t = time.perf_counter()
        s = self.scale
        region = self.reader.read(i * self.block_h, j * self.block_w, self.block_h, self.block_w, fill=255)  # type: ignore[attr-defined]
        reduced = resize_area(region, (self.block_h // s, self.block_w // s))
        if self.transform is not None:
            reduced = self.transform(reduced)
        with self._lock:
            self.blocks_read += 1
            self.read_s += time.perf_counter() - t
        return reduced

    def block_keys(self, y0: int, x0: int, size: int) -> list[tuple[int, int]]:
        """``(row, column)`` of each block the (size x size) full-res window at (y0, x0) overlaps."""
        rows = range(y0 // self.block_h, (y0 + size - 1) // self.block_h + 1)
        cols = range(x0 // self.block_w, (x0 + size - 1) // self.block_w + 1)
        return [(i, j) for i in rows for j in cols]

    def release_above(self, y0: int) -> None:
        """Free every block that ends at or above full-res row ``y0`` (no later window needs it)."""
        for key in [k for k in self._blocks if (k[0] + 1) * self.block_h <= y0]:
            del self._blocks[key]

    def request(self, y0: int, x0: int, size: int) -> Callable[[], np.ndarray]:
        """Start what the (size x size) full-res window at (y0, x0) needs; the returned call
        waits and gives it at model resolution, (size / scale, size / scale, 3) uint8."""
        s = self.scale
        if y0 % s or x0 % s or size % s:
            raise ValueError(f"window ({y0}, {x0}) of {size} px is not on the model-pixel lattice of scale {s}")
        self.release_above(y0)
        parts: list[tuple[int, int, Future[np.ndarray]]] = []
        for i, j in self.block_keys(y0, x0, size):
            fut = self._blocks.get((i, j))
            if fut is None:
                fut = self._blocks[(i, j)] = self.pool.submit(self._load, i, j)
            parts.append((i, j, fut))

        def cut() -> np.ndarray:
            out = np.empty((size // s, size // s, 3), np.uint8)
            for i, j, fut in parts:
                block = fut.result()
                by, bx = i * self.block_h, j * self.block_w  # block origin, full-res
                ya, yb = max(y0, by), min(y0 + size, by + self.block_h)
                xa, xb = max(x0, bx), min(x0 + size, bx + self.block_w)
                out[(ya - y0) // s : (yb - y0) // s, (xa - x0) // s : (xb - x0) // s] = block[
                    (ya - by) // s : (yb - by) // s, (xa - bx) // s : (xb - bx) // s
                ]
            return out

        return cut

    @property
    def cached_blocks(self) -> int:
        return len(self._blocks)


__all__ = ["MAX_ALIGNED_BLOCK", "TARGET_BLOCK", "ReducedSlide", "block_side", "read_window"]
