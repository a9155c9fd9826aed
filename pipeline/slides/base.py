"""The backend-independent slide reader (:class:`SlideReader`) and helpers both backends share.

A backend reads raw in-bounds windows; :class:`SlideReader` pads them, converts them to
uint8 RGB, streams bands, builds downsampled overviews and turns library errors into
:class:`~pipeline.errors.SlideError`. See :mod:`pipeline.slides` for the decisions.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import SlideError
from pipeline.slides.pixels import _Pixels

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LEVEL_TOLERANCE = 0.01  # a level with downsample 4.0007 serves a request for 4
_MIN_BAND_ROWS = 256  # strips of a few rows are grouped into bands at least this high
_DASK_CHUNK_WIDTH = 4096  # dask chunks group tiles along x up to this width (see to_dask)
_PROBE_FULL = 2048 * 2048  # probe the whole smallest level below this many pixels


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _splits(total: int, step: int) -> tuple[int, ...]:
    """Chunk sizes covering ``total`` in steps of ``step`` (last one shorter)."""
    if total <= 0:
        return (0,)
    return tuple(min(step, total - i) for i in range(0, total, step))


def _exc_text(exc: BaseException) -> str:
    """Exception text including a chained cause (GDAL puts the real reason there)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def _check_file(path: Path) -> int:
    """Fail early, naming the file, for anything that cannot be a TIFF; return its size."""
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir():
        raise SlideError(path, "is a directory, not a slide file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SlideError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise SlideError(path, "empty file (0 bytes)")
    if head[:4] not in _TIFF_MAGIC:
        raise SlideError(path, f"not a TIFF file (starts with {head[:4]!r})")
    if size < 8:
        raise SlideError(path, f"truncated file: {size} bytes, shorter than a TIFF header")
    return size


class SlideReader:
    """A lazily read whole-slide image: windows at any level as uint8 RGB.

    Subclasses implement ``_read_raw`` (in-bounds window in raw samples, (h, w, c)),
    ``to_dask`` and ``_close``; this class does padding, conversion, band streaming,
    downsampled overviews and error wrapping.
    """

    backend = ""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.level_shapes: tuple[tuple[int, int], ...] = ()
        self.layout = ""  # human-readable description, e.g. for the slide sheet
        self._pixels: _Pixels | None = None
        self._closed = False

    # -- geometry -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) at full resolution (level 0)."""
        return self.level_shapes[0]

    @property
    def level_count(self) -> int:
        return len(self.level_shapes)

    def level_downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` (mean of both axes)."""
        level = self._check_level(level)
        (H, W), (h, w) = self.level_shapes[0], self.level_shapes[level]
        return (H / h + W / w) / 2

    def best_level(self, downsample: float) -> int:
        """Coarsest level whose downsample is <= ``downsample`` (1 % tolerance)."""
        best = 0
        for level in range(self.level_count):
            if self.level_downsample(level) <= downsample * (1 + _LEVEL_TOLERANCE):
                best = level
        return best

    # -- reading ------------------------------------------------------------------------
    def read(
        self, y0: int, x0: int, height: int, width: int, level: int = 0, fill: int = 255
    ) -> np.ndarray:
        """uint8 (height, width, 3) RGB window of ``level`` (coords in that level's pixels).

        Any part of the window outside the slide is filled with ``fill`` (255 = white).
        Only the tiles under the window are decoded.
        """
        level = self._check_level(level)
        y0, x0, height, width = int(y0), int(x0), int(height), int(width)
        if height < 0 or width < 0:
            raise ValueError(f"window size must be >= 0, got {height}x{width}")
        if not 0 <= int(fill) <= 255:
            raise ValueError(f"fill must be in 0..255, got {fill}")
        lh, lw = self.level_shapes[level]
        ya, yb = max(y0, 0), min(y0 + height, lh)
        xa, xb = max(x0, 0), min(x0 + width, lw)
        if ya >= yb or xa >= xb:
            return np.full((height, width, 3), fill, np.uint8)
        rgb = self._read_rgb(level, ya, xa, yb - ya, xb - xa)
        if (ya, xa, yb - ya, xb - xa) == (y0, x0, height, width):
            return rgb
        out = np.full((height, width, 3), fill, np.uint8)
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = rgb
        return out

    def read_region_downsampled(self, downsample: int) -> np.ndarray:
        """Whole slide at 1/``downsample``: uint8 (ceil(H/d), ceil(W/d), 3).

        Reads the best pyramid level band by band (:meth:`iter_bands`) and averages the
        level pixels falling in each output pixel's footprint (exact area average; a
        footprint never straddles two output pixels). Memory: the output plus a few bands.
        """
        d = int(downsample)
        if d < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        H, W = self.shape
        oh, ow = -(-H // d), -(-W // d)
        level = self.best_level(d)
        lh, lw = self.level_shapes[level]
        # bin boundaries in level pixels: output pixel i covers level rows [rb[i], rb[i+1])
        rb = np.minimum((np.arange(oh + 1) * d * lh) // H, lh)
        cb = np.minimum((np.arange(ow + 1) * d * lw) // W, lw)
        rb[-1], cb[-1] = lh, lw
        row_bin = np.searchsorted(rb[1:-1], np.arange(lh), side="right")
        col_idx = np.minimum(cb[:-1], lw - 1)
        col_cnt = np.maximum(np.diff(cb), 1)
        acc = np.zeros((oh, ow, 3), np.uint64)
        cnt = np.zeros(oh, np.uint64)
        for y0, band in self.iter_bands(level):
            bins = row_bin[y0 : y0 + band.shape[0]]
            starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
            # rows first (whole contiguous rows, cheap), then columns on the reduced array
            # (np.add.reduceat with a dtype cast is ~20x slower than these slice sums)
            ends = np.r_[starts[1:], len(bins)]
            rows = np.stack([band[a:b].sum(axis=0, dtype=np.uint32) for a, b in zip(starts, ends)])
            sums = np.add.reduceat(rows, col_idx, axis=1, dtype=np.uint64)
            acc[bins[starts]] += sums
            cnt[bins[starts]] += np.diff(np.r_[starts, len(bins)]).astype(np.uint64)
        filled = np.flatnonzero(cnt)
        if filled.size < oh:  # upsampling edge case: empty bins take the nearest filled row
            near = filled[np.clip(np.searchsorted(filled, np.arange(oh)), 0, filled.size - 1)]
            acc, cnt = acc[near], cnt[near]
        total = cnt[:, None, None] * col_cnt[None, :, None].astype(np.uint64)
        return ((acc + total // 2) // total).astype(np.uint8)

    def iter_bands(
        self,
        level: int = 0,
        band_height: int | None = None,
        workers: int | None = None,
        prefetch: int = 1,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Stream a whole level top to bottom as ``(y0, band)``, band uint8 (h, width, 3).

        The fast path for full passes: bands are decoded by ``workers`` threads while the
        caller works on the previous one (``prefetch`` bands ahead), so memory stays at
        (prefetch + 2) bands. ``band_height`` defaults to one row of tiles (strips are
        grouped to >= 256 rows) and is rounded up to whole tile rows so no tile is decoded
        twice.
        """
        level = self._check_level(level)
        lh, _lw = self.level_shapes[level]
        seg = self._segment_rows(level)
        if band_height is None:
            band_height = seg * max(1, -(-_MIN_BAND_ROWS // seg)) if seg < _MIN_BAND_ROWS else seg
        bh = max(1, -(-int(band_height) // seg) * seg)
        workers = workers or _default_workers()
        starts = iter(range(0, lh, bh))
        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="slide-band")
        pending: deque[tuple[int, Callable[[], np.ndarray]]] = deque()
        try:
            for _ in range(1 + max(0, prefetch)):
                y = next(starts, None)
                if y is not None:
                    pending.append((y, self._submit_band(pool, level, y, min(bh, lh - y), workers)))
            while pending:
                y, finish = pending.popleft()
                band = finish()
                nxt = next(starts, None)
                if nxt is not None:
                    pending.append(
                        (nxt, self._submit_band(pool, level, nxt, min(bh, lh - nxt), workers))
                    )
                yield y, band
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def to_dask(self, level: int = 0, chunk_width: int | None = None) -> da.Array:
        """Lazy (h, w, 3) uint8 Dask array of ``level``, chunks aligned to the tiles.

        Chunks are whole tiles grouped along x up to ``chunk_width`` px (default 4096).
        """
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # pickles as "open this path again" (e.g. for dask.distributed workers)
        from pipeline.slides import open_slide  # late: the package imports this module

        return (open_slide, (str(self.path), self.backend))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, shape={self.shape}, "
            f"levels={len(self.level_shapes)}, {self.layout})"
        )

    # -- helpers for subclasses ---------------------------------------------------------
    def _check_level(self, level: int) -> int:
        if self._closed:
            raise ValueError(f"{self.path}: slide is closed")
        level = int(level)
        if not 0 <= level < len(self.level_shapes):
            raise ValueError(
                f"{self.path}: level {level} does not exist (levels 0..{len(self.level_shapes) - 1})"
            )
        return level

    def _read_rgb(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """In-bounds window as RGB uint8; library errors become SlideError."""
        try:
            raw = self._read_raw(level, y0, x0, h, w)
        except (SlideError, MemoryError):
            raise
        except Exception as exc:
            where = self._locate_failure(level, y0, x0, h, w)
            raise SlideError(
                self.path,
                f"cannot decode level {level} window y0={y0} x0={x0} {h}x{w} ({where}): "
                f"{_exc_text(exc)}",
            ) from exc
        assert self._pixels is not None
        return self._pixels.to_rgb8(raw)

    def _probe(self) -> np.ndarray:
        """Raw samples from the smallest level, for fixing the uint8 scale."""
        level = len(self.level_shapes) - 1
        h, w = self.level_shapes[level]
        try:
            if h * w <= _PROBE_FULL:
                return self._read_raw(level, 0, 0, h, w)
            size = 256
            parts = []
            for fy in np.linspace(0, 1, 5):
                for fx in np.linspace(0, 1, 5):
                    y0 = int(fy * max(0, h - size))
                    x0 = int(fx * max(0, w - size))
                    raw = self._read_raw(level, y0, x0, min(size, h), min(size, w))
                    parts.append(
                        raw.reshape(-1, raw.shape[-1]) if raw.ndim == 3 else raw.reshape(-1, 1)
                    )
            return np.concatenate(parts)
        except (SlideError, MemoryError):
            raise
        except Exception as exc:
            raise SlideError(self.path, f"cannot decode level {level}: {_exc_text(exc)}") from exc

    def _submit_band(
        self, pool: ThreadPoolExecutor, level: int, y0: int, h: int, workers: int
    ) -> Callable[[], np.ndarray]:
        """Start decoding one band; return a function that waits and returns it.

        Default: the band is split into ``workers`` column pieces read with ``_read_rgb``.
        """
        _lh, lw = self.level_shapes[level]
        step = self._segment_cols(level)
        per = -(-lw // max(1, workers))
        piece = max(step, -(-per // step) * step)
        futures = [
            (x, pool.submit(self._read_rgb, level, y0, x, h, min(piece, lw - x)))
            for x in range(0, lw, piece)
        ]

        def finish() -> np.ndarray:
            band = np.empty((h, lw, 3), np.uint8)
            for x, fut in futures:
                part = fut.result()
                band[:, x : x + part.shape[1]] = part
            return band

        return finish

    def _locate_failure(self, level: int, y0: int, x0: int, h: int, w: int) -> str:
        """Which tiles a failing window covers (subclasses may name the exact tile)."""
        sh, sw = self._segment_rows(level), self._segment_cols(level)
        return (
            f"tile rows {y0 // sh}-{(y0 + h - 1) // sh}, "
            f"tile cols {x0 // sw}-{(x0 + w - 1) // sw}"
        )

    def _segment_rows(self, level: int) -> int:
        raise NotImplementedError

    def _segment_cols(self, level: int) -> int:
        raise NotImplementedError

    def _read_raw(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError
