"""Open whole-slide TIFFs lazily and read any window as uint8 RGB.

Two backends share one interface (:class:`SlideReader`):

* ``"tifffile"`` (:class:`TiffSlide`): tifffile parses the TIFF structure; windows are read
  through tifffile's Zarr store (``series.aszarr`` + ``zarr.open_array``), so a read decodes
  only the tiles it touches; :meth:`SlideReader.to_dask` wraps the same store in Dask.
  :meth:`SlideReader.iter_bands` streams a whole level band by band, decoding tiles with
  tifffile's own segment decoder in a thread pool (imagecodecs releases the GIL) -- the fast
  path for full passes (tissue thumbnails, full-slide scans).
* ``"rasterio"`` (:class:`RasterioSlide`): GDAL decodes; windows are
  ``rasterio.windows.Window`` reads, one dataset handle per thread; GDAL overviews are levels.

Decisions (documented here because every stage depends on them):

* **Coordinates** are ``(y, x)`` in the pixels of the requested level, ``level=0`` = full
  resolution. **Borders**: any window may cross or lie outside the slide; the part outside is
  filled with ``fill`` (default 255 = white glass) in the *output* (uint8 RGB) space. Both
  backends pad in :meth:`SlideReader.read` the same way (GDAL's boundless VRT path is not
  used: it is slower and its fill would apply to raw, unscaled samples).
* **Layouts**: chunky RGB (tiled or stripped), planar ``(3, H, W)``, leading singleton
  dimensions such as HuBMAP's ``(1, 1, 3, H, W)`` (indexed away), one page per channel (three
  same-size grey pages = R, G, B), pyramids as sub-IFDs or as series levels. Grey and
  grey+alpha are replicated to RGB, RGBA drops alpha, MINISWHITE grey is inverted.
* **Which image is the slide**: SVS -> series 0 (thumbnail / label / macro are ignored, also
  when GDAL reports them as "overviews": a level must be a consistent downsample of level 0
  in both axes). OME -> the largest series. Any other TIFF must be unambiguous: one largest
  image (or three single-channel pages of that size), and every smaller image a consistent
  downsample of it (a pyramid level); otherwise :class:`SlideError` ("cannot tell which is
  the slide"). Series named thumbnail / label / macro / overview are ignored.
* **Sample formats -> uint8**: uint8 as is; 1-bit as 0/255; other unsigned integers are
  scaled by ``255 / (2**bits - 1)``, where ``bits`` is BitsPerSample when it is below the
  container size (12-bit packed), else the bit depth that holds the largest sample of a cheap
  probe of the smallest level (the whole level if <= 2048x2048 px, else 25 windows of 256 px),
  at least 8: 12-bit data in uint16 maps 4095 -> 255, full-range 16-bit maps 65535 -> 255. The
  scale is fixed per slide at open so every window and level agrees. Float samples must lie
  in [0, 1] (probe) and are scaled by 255 (NaN -> 0); signed integers, complex, palette and
  CMYK images are rejected with :class:`SlideError`.
* **Errors** name the file and the problem: missing / empty / not a TIFF, unparsable
  structure, unsupported encoding (e.g. an unknown compression), a tile whose bytes run past
  the end of the file (checked at open from the tile offsets and byte counts), a tile that
  fails to decode (on read: the message names the tile, or the window and its tile range),
  ambiguous images, unsupported sample formats.
* Absent (sparse) tiles read as 0, as GDAL does.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import ConfigError, SlideError
from pipeline.progress import get_logger

log = get_logger(__name__)

BACKENDS = ("tifffile", "rasterio")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ASSOCIATED = ("thumbnail", "label", "macro", "overview")
_LEVEL_TOLERANCE = 0.01  # a level with downsample 4.0007 serves a request for 4
_MIN_BAND_ROWS = 256  # strips of a few rows are grouped into bands at least this high
_DASK_CHUNK_WIDTH = 4096  # dask chunks group tiles along x up to this width (see to_dask)
_PROBE_FULL = 2048 * 2048  # probe the whole smallest level below this many pixels
_JPEG = {6, 7, 33007, 34892}  # compressions whose decode needs JPEGTables


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _splits(total: int, step: int) -> tuple[int, ...]:
    """Chunk sizes covering ``total`` in steps of ``step`` (last one shorter)."""
    if total <= 0:
        return (0,)
    return tuple(min(step, total - i) for i in range(0, total, step))


def _is_downsample(big: tuple[int, int], small: tuple[int, int]) -> bool:
    """Whether ``small`` is ``big`` reduced by one factor in both axes (floor or ceil sizes).

    Rejects the SVS label and macro images that GDAL reports as overviews, and unrelated
    images of another aspect ratio.
    """
    (H, W), (h, w) = big, small
    if h < 1 or w < 1 or h > H or w > W or (h, w) == (H, W):
        return False
    lo = max(H / (h + 1), W / (w + 1))
    hi = min(H / (h - 1) if h > 1 else math.inf, W / (w - 1) if w > 1 else math.inf)
    return lo < hi


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


def _choose_images(
    sizes: Sequence[tuple[int, int, int]], prefer_largest: bool
) -> tuple[list[int], list[list[int]]]:
    """Decide which images form the slide; raise ValueError(problem) when it is ambiguous.

    ``sizes`` holds ``(height, width, channels)`` per candidate image. Returns the indices
    of level 0 (one image, or three single-channel pages = R, G, B) and groups of indices
    of further pyramid levels (same grouping, largest first).
    """
    if not sizes:
        raise ValueError("no image in the file")
    if len(sizes) == 1:
        return [0], []
    if prefer_largest:
        best = max(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], -i))
        return [best], []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w, _c) in enumerate(sizes):
        groups.setdefault((h, w), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1])
    (H, W), main = ordered[0]
    if len(main) == 3 and all(sizes[i][2] == 1 for i in main):
        pass  # one page per channel
    elif len(main) != 1:
        raise ValueError(
            f"{len(main)} images of the same size {H}x{W}: cannot tell which is the slide "
            "(expected one image, or three single-channel pages = R, G, B)"
        )
    levels = []
    for (h, w), idx in ordered[1:]:
        if not _is_downsample((H, W), (h, w)) or len(idx) != len(main):
            raise ValueError(
                f"images of different sizes {H}x{W} and {h}x{w} that do not form a pyramid: "
                "cannot tell which is the slide"
            )
        levels.append(idx)
    return main, levels


def _pyramid(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of ``shapes`` that form a strictly decreasing pyramid under shapes[0]."""
    keep = [0]
    order = sorted(range(1, len(shapes)), key=lambda i: -shapes[i][0] * shapes[i][1])
    for i in order:
        prev = shapes[keep[-1]]
        if (
            _is_downsample(shapes[0], shapes[i])
            and shapes[i][0] <= prev[0]
            and shapes[i][1] <= prev[1]
            and shapes[i] != prev
        ):
            keep.append(i)
        else:
            log.debug("ignoring image of size %s: not a pyramid level of %s", shapes[i], shapes[0])
    return keep


@dataclass(frozen=True)
class _Pixels:
    """How raw samples become uint8 RGB: channels kept, scale, inversion."""

    dtype: np.dtype
    channels: int
    maxval: float  # raw value that maps to 255
    invert: bool

    def to_rgb8(self, raw: np.ndarray) -> np.ndarray:
        """(h, w[, c]) raw samples -> (h, w, 3) uint8 RGB."""
        if raw.ndim == 2:
            raw = raw[..., None]
        x = raw[..., :3] if self.channels >= 3 else raw[..., :1]
        if x.dtype == np.uint8 and self.maxval == 255:
            out = x
        elif x.dtype == np.bool_:
            out = x.astype(np.uint8) * np.uint8(255)
        elif x.dtype.kind == "f":
            y = np.nan_to_num(x.astype(np.float32, copy=False), nan=0.0)
            out = np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            y = x.astype(np.float32) * np.float32(255.0 / self.maxval) + np.float32(0.5)
            out = np.minimum(y, 255).astype(np.uint8)
        if self.invert:
            out = 255 - out
        if out.shape[-1] == 1:
            out = np.repeat(out, 3, axis=-1)
        return np.ascontiguousarray(out)


def _make_pixels(
    path: Path,
    dtype: Any,
    channels: int,
    invert: bool,
    bits: int | None,
    probe: Callable[[], np.ndarray],
) -> _Pixels:
    """Validate the sample format and fix the per-slide scale to uint8 (see module doc)."""
    dtype = np.dtype(dtype)
    if channels not in (1, 2, 3, 4):
        raise SlideError(
            path,
            f"unsupported image with {channels} channels per pixel "
            "(expected 1 grey, 2 grey+alpha, 3 RGB or 4 RGBA)",
        )
    kind = dtype.kind
    if kind == "b":
        return _Pixels(dtype, channels, 1.0, invert)
    if kind == "u":
        nbits = dtype.itemsize * 8
        if bits is not None and 0 < bits < nbits:
            maxval = 2**bits - 1
        elif dtype == np.uint8:
            maxval = 255
        else:
            sample = probe()
            top = int(sample[..., : min(channels, 3)].max()) if sample.size else 0
            maxval = 2 ** max(8, top.bit_length()) - 1
        return _Pixels(dtype, channels, float(maxval), invert)
    if kind == "f":
        sample = probe()[..., : min(channels, 3)]
        finite = sample[np.isfinite(sample)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise SlideError(
                path,
                f"unsupported floating-point samples in [{lo:g}, {hi:g}] "
                "(only [0, 1] is supported, scaled by 255)",
            )
        return _Pixels(dtype, channels, 1.0, invert)
    if kind == "i":
        raise SlideError(path, f"unsupported sample format: signed integers ({dtype})")
    raise SlideError(path, f"unsupported sample format: {dtype}")


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


# ------------------------------------------------------------------------------------------
# tifffile backend
# ------------------------------------------------------------------------------------------


class _Segments:
    """Direct access to one page's tiles or strips: read their bytes, decode, place.

    Uses tifffile's own decode function (the one ``page.asarray`` uses), so JPEG tables,
    YCbCr, predictors and bit order are handled identically.
    """

    def __init__(self, page: Any, fh: Any) -> None:
        kf = page.keyframe
        self.page = page
        self.fh = fh
        self.decode = kf.decode
        self.kwargs: dict[str, Any] = {}
        if kf.compression in _JPEG:
            self.kwargs = {"jpegtables": page.jpegtables, "jpegheader": kf.jpegheader}
        self.tiled = bool(kf.is_tiled)
        self.H, self.W = int(kf.imagelength), int(kf.imagewidth)
        self.seg_h = int(kf.tilelength) if self.tiled else min(int(kf.rowsperstrip), self.H)
        self.seg_w = int(kf.tilewidth) if self.tiled else self.W
        self.seg_h = max(1, self.seg_h)
        self.rows = -(-self.H // self.seg_h)
        self.cols = -(-self.W // self.seg_w)
        spp = int(kf.samplesperpixel)
        self.planes = spp if kf.planarconfig == 2 else 1
        self.contig = 1 if kf.planarconfig == 2 else spp
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        self.kind = "tile" if self.tiled else "strip"

    @property
    def channels(self) -> int:
        return self.planes * self.contig

    def indices(self, y0: int, h: int, x0: int, w: int) -> list[int]:
        r0, r1 = y0 // self.seg_h, min(self.rows, -(-(y0 + h) // self.seg_h))
        c0, c1 = x0 // self.seg_w, min(self.cols, -(-(x0 + w) // self.seg_w))
        per_plane = self.rows * self.cols
        return [
            p * per_plane + r * self.cols + c
            for p in range(self.planes)
            for r in range(r0, r1)
            for c in range(c0, c1)
        ]

    def describe(self, index: int) -> str:
        per_plane = self.rows * self.cols
        p, rest = divmod(index, per_plane)
        r, c = divmod(rest, self.cols)
        plane = f", plane {p}" if self.planes > 1 else ""
        return f"{self.kind} {index} (row {r}, col {c}{plane}) of page {self.page.index}"

    def read(self, indices: list[int]) -> list[tuple[bytes | None, int]]:
        return list(
            self.fh.read_segments(
                [self.offsets[i] for i in indices],
                [self.counts[i] for i in indices],
                indices=indices,
                sort=True,
                lock=self.fh.lock,
                flat=True,
            )
        )

    def place(
        self, out: np.ndarray, y0: int, x0: int, chan0: int, data: bytes | None, index: int
    ) -> None:
        """Decode one segment and copy its part inside ``out`` (rows y0.., cols x0..)."""
        seg, (s, _d, ty, tx, _), _shape = self.decode(data, index, **self.kwargs)
        if seg is None:
            return
        h, w = out.shape[:2]
        ya, yb = max(ty, y0), min(ty + seg.shape[1], y0 + h, self.H)
        xa, xb = max(tx, x0), min(tx + seg.shape[2], x0 + w, self.W)
        if ya >= yb or xa >= xb:
            return
        c = chan0 + s
        out[ya - y0 : yb - y0, xa - x0 : xb - x0, c : c + seg.shape[3]] = seg[
            0, ya - ty : yb - ty, xa - tx : xb - tx, :
        ]


@dataclass
class _TiffPart:
    """One tifffile series level contributing channels to a slide level."""

    zarr: Any  # zarr.Array over tifffile's ZarrTiffStore
    yax: int
    xax: int
    cax: int | None
    channels: int
    segments: list[_Segments] | None  # pages in channel order, for the direct decoder
    chunks: tuple[int, ...]

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        idx = tuple(
            (
                slice(y0, y0 + h)
                if i == self.yax
                else slice(x0, x0 + w) if i == self.xax else slice(None) if i == self.cax else 0
            )
            for i in range(self.zarr.ndim)
        )
        arr = np.asarray(self.zarr[idx])
        return self.to_yxc(arr)

    def to_yxc(self, arr: Any) -> Any:
        """Reorder the kept (Y, X[, C]) axes of an indexed array to (Y, X, C)."""
        keep = sorted(a for a in (self.yax, self.xax, self.cax) if a is not None)
        perm = [keep.index(self.yax), keep.index(self.xax)]
        if self.cax is not None:
            perm.append(keep.index(self.cax))
        arr = arr.transpose(perm)
        return arr if self.cax is not None else arr[..., None]


class TiffSlide(SlideReader):
    """tifffile backend: tifffile -> Zarr store -> windows / Dask; direct tile decoding for bands."""

    backend = "tifffile"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        import tifffile
        import zarr

        size = _check_file(self.path)
        try:
            self._tf = tifffile.TiffFile(self.path)
        except tifffile.TiffFileError as exc:
            raise SlideError(self.path, f"not a valid TIFF: {exc}") from exc
        except Exception as exc:
            raise SlideError(self.path, f"cannot parse TIFF structure: {_exc_text(exc)}") from exc
        try:
            self._setup(size, zarr)
        except BaseException:
            self._tf.close()
            raise

    # structure --------------------------------------------------------------------------
    def _setup(self, size: int, zarr: Any) -> None:
        tf = self._tf
        try:
            all_series = list(tf.series)
        except Exception as exc:
            raise SlideError(self.path, f"cannot parse TIFF structure: {_exc_text(exc)}") from exc
        if tf.is_svs:
            chosen = [[all_series[0]]] if all_series else []
            kind = "SVS"
        else:
            candidates = [
                s for s in all_series if not any(a in (s.name or "").lower() for a in _ASSOCIATED)
            ] or all_series
            sizes = []
            for s in candidates:
                try:
                    sizes.append(self._geometry(s)[:3])
                except ValueError:
                    sizes.append((*self._yx(s), 0))
            try:
                main, extra = _choose_images(sizes, prefer_largest=bool(tf.is_ome))
            except ValueError as exc:
                raise SlideError(self.path, str(exc)) from exc
            chosen = [[candidates[i] for i in main]] + [[candidates[i] for i in g] for g in extra]
            kind = "OME" if tf.is_ome else "TIFF"
        if not chosen:
            raise SlideError(self.path, "no image in the file")

        # levels: (series, level index) per channel part; own levels of the main series first
        main = chosen[0]
        n_own = min(len(s.levels) for s in main)
        level_parts = [[(s, i) for s in main] for i in range(n_own)]
        level_parts += [[(s, 0) for s in group] for group in chosen[1:]]
        shapes = [self._yx(parts[0][0].levels[parts[0][1]]) for parts in level_parts]
        for parts in level_parts:  # channel parts of one level must agree in size
            if len({self._yx(s.levels[i]) for s, i in parts}) != 1:
                raise SlideError(self.path, "channel pages of different sizes")
        keep = _pyramid(shapes)
        self._levels: list[list[_TiffPart]] = []
        for k in keep:
            try:
                parts = [self._make_part(s, i, zarr, size) for s, i in level_parts[k]]
            except SlideError:
                if k == 0:
                    raise
                log.warning("%s: ignoring unreadable pyramid level %s", self.path, shapes[k])
                continue
            if k != 0 and (
                sum(p.channels for p in parts) != sum(p.channels for p in self._levels[0])
                or parts[0].zarr.dtype != self._levels[0][0].zarr.dtype
            ):
                log.warning("%s: ignoring pyramid level %s of another format", self.path, shapes[k])
                continue
            self._levels.append(parts)
        self.level_shapes = tuple(
            (int(p[0].zarr.shape[p[0].yax]), int(p[0].zarr.shape[p[0].xax])) for p in self._levels
        )

        parts0 = self._levels[0]
        kf = main[0].keyframe
        channels = sum(p.channels for p in parts0)
        photometric = int(kf.photometric)
        if photometric == 3:
            raise SlideError(self.path, "unsupported palette (indexed colour) image")
        if photometric not in (0, 1, 2, 6):
            raise SlideError(
                self.path, f"unsupported photometric interpretation {kf.photometric!r}"
            )
        if photometric == 6 and kf.compression not in _JPEG | {33003, 33005, 34712}:
            raise SlideError(self.path, "unsupported YCbCr image without JPEG compression")
        bits = kf.bitspersample if isinstance(kf.bitspersample, int) else None
        self._pixels = _make_pixels(
            self.path, parts0[0].zarr.dtype, channels, photometric == 0, bits, self._probe
        )
        comp = getattr(kf.compression, "name", str(kf.compression)).lower()
        seg = parts0[0].segments[0] if parts0[0].segments else None
        grid = (
            f"tiled {seg.seg_h}x{seg.seg_w}"
            if seg and seg.tiled
            else f"strips of {seg.seg_h} rows" if seg else "contiguous"
        )
        arrangement = (
            "channel pages"
            if len(parts0) > 1 or (seg and len(parts0[0].segments or []) > 1)
            else "planar" if seg and seg.planes > 1 else "chunky"
        )
        self.layout = (
            f"{kind} {arrangement} {channels}-channel {np.dtype(parts0[0].zarr.dtype)}, "
            f"{grid}, {comp}, {len(self.level_shapes)} level(s)"
        )

    @staticmethod
    def _yx(series: Any) -> tuple[int, int]:
        shape, axes = series.get_shape(False), series.get_axes(False)
        if "Y" not in axes or "X" not in axes:
            return 0, 0  # not an image; _geometry names the problem if it is chosen
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])

    @staticmethod
    def _geometry(series: Any) -> tuple[int, int, int, int, int, int | None]:
        """(height, width, channels, yax, xax, cax) of a series level; ValueError if not 2-D."""
        shape, axes = series.get_shape(False), series.get_axes(False)
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"image without Y/X axes (axes {axes}, shape {shape})")
        yax, xax = axes.index("Y"), axes.index("X")
        extra = [i for i, n in enumerate(shape) if i not in (yax, xax) and n > 1]
        if len(extra) > 1:
            raise ValueError(
                f"image has extra dimensions (axes {axes}, shape {tuple(shape)}); "
                "only single 2-D grey / RGB(A) images are supported"
            )
        cax = extra[0] if extra else None
        channels = int(shape[cax]) if cax is not None else 1
        return int(shape[yax]), int(shape[xax]), channels, yax, xax, cax

    def _make_part(self, series: Any, level: int, zarr: Any, size: int) -> _TiffPart:
        lvl = series.levels[level]
        try:
            h, w, channels, yax, xax, cax = self._geometry(lvl)
        except ValueError as exc:
            raise SlideError(self.path, str(exc)) from exc
        if h == 0 or w == 0:
            raise SlideError(self.path, f"empty image ({h}x{w})")
        pages = list(lvl.pages)
        if any(p is None for p in pages):
            raise SlideError(self.path, "missing pages in the image series")
        for page in pages:
            try:  # unsupported compression / predictor / dtype raise here, not at first read
                page.keyframe.decode(None, 0)
            except Exception as exc:
                raise SlideError(self.path, f"unsupported encoding: {_exc_text(exc)}") from exc
            self._check_truncation(page, level, size)
        fh = self._tf.filehandle
        segments: list[_Segments] | None = None
        try:
            segs = [_Segments(p, fh) for p in pages]
            if sum(s.channels for s in segs) == channels and all(
                int(p.keyframe.imagedepth) == 1 for p in pages
            ):
                segments = segs
        except Exception:  # exotic layout: bands fall back to Zarr reads
            segments = None
        try:
            store = series.aszarr(level=level, squeeze=False, maxworkers=2)
            arr = zarr.open_array(store, mode="r")
        except Exception as exc:
            raise SlideError(self.path, f"cannot map image to Zarr: {_exc_text(exc)}") from exc
        return _TiffPart(arr, yax, xax, cax, channels, segments, tuple(arr.chunks))

    def _check_truncation(self, page: Any, level: int, size: int) -> None:
        offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
        counts = np.asarray(page.databytecounts, dtype=np.uint64)
        if offsets.size == 0:
            return
        ends = np.where(counts > 0, offsets + counts, 0)
        i = int(np.argmax(ends))
        if int(ends[i]) > size:
            kind = "tile" if page.keyframe.is_tiled else "strip"
            raise SlideError(
                self.path,
                f"truncated file: {kind} {i} of level {level} (page {page.index}) ends at byte "
                f"{int(ends[i])} but the file has only {size} bytes",
            )

    # reading ----------------------------------------------------------------------------
    def _read_raw(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        parts = [p.read(y0, x0, h, w) for p in self._levels[level]]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    def _segment_rows(self, level: int) -> int:
        p = self._levels[level][0]
        return p.segments[0].seg_h if p.segments else int(p.chunks[p.yax])

    def _segment_cols(self, level: int) -> int:
        p = self._levels[level][0]
        return p.segments[0].seg_w if p.segments else int(p.chunks[p.xax])

    def _locate_failure(self, level: int, y0: int, x0: int, h: int, w: int) -> str:
        """Decode the window's segments one by one to name the first that fails."""
        rough = super()._locate_failure(level, y0, x0, h, w)
        try:
            for part in self._levels[level]:
                for seg in part.segments or []:
                    for data, index in seg.read(seg.indices(y0, h, x0, w)):
                        try:
                            seg.decode(data, index, **seg.kwargs)
                        except Exception:
                            return seg.describe(index)
        except Exception:
            pass
        return rough

    def _submit_band(
        self, pool: ThreadPoolExecutor, level: int, y0: int, h: int, workers: int
    ) -> Callable[[], np.ndarray]:
        parts = self._levels[level]
        if not all(p.segments for p in parts):
            return super()._submit_band(pool, level, y0, h, workers)
        _lh, lw = self.level_shapes[level]
        pixels = self._pixels
        assert pixels is not None
        segs = [(s, chan0) for s, chan0 in self._channel_offsets(parts)]
        direct = (
            len(segs) == 1
            and segs[0][0].contig == 3
            and segs[0][0].planes == 1
            and pixels.dtype == np.uint8
            and pixels.maxval == 255
            and not pixels.invert
        )
        band = np.empty((h, lw, 3), np.uint8)
        step = segs[0][0].seg_w
        ncols = -(-lw // step)
        per_job = -(-ncols // max(1, workers))
        channels = sum(s.channels for s, _ in segs)

        def job(xa: int, xb: int) -> None:
            try:
                out = band[:, xa:xb] if direct else np.zeros((h, xb - xa, channels), pixels.dtype)
                for seg, chan0 in segs:
                    for data, index in seg.read(seg.indices(y0, h, xa, xb - xa)):
                        try:
                            if data is None and direct:
                                self._zero_segment(seg, out, y0, xa, index)
                            seg.place(out, y0, xa, chan0, data, index)
                        except Exception as exc:
                            raise SlideError(
                                self.path,
                                f"cannot decode {seg.describe(index)}, level {level}: "
                                f"{_exc_text(exc)}",
                            ) from exc
                if not direct:
                    band[:, xa:xb] = pixels.to_rgb8(out)
            except (SlideError, MemoryError):
                raise
            except Exception as exc:
                raise SlideError(
                    self.path,
                    f"cannot read level {level} rows {y0}-{y0 + h - 1}, columns {xa}-{xb - 1}: "
                    f"{_exc_text(exc)}",
                ) from exc

        futures: list[Future[None]] = []
        for c0 in range(0, ncols, per_job):
            xa, xb = c0 * step, min(lw, (c0 + per_job) * step)
            futures.append(pool.submit(job, xa, xb))

        def finish() -> np.ndarray:
            for fut in futures:
                fut.result()
            return band

        return finish

    @staticmethod
    def _channel_offsets(parts: list[_TiffPart]) -> Iterator[tuple[_Segments, int]]:
        chan = 0
        for part in parts:
            for seg in part.segments or []:
                yield seg, chan
                chan += seg.channels

    @staticmethod
    def _zero_segment(seg: _Segments, out: np.ndarray, y0: int, x0: int, index: int) -> None:
        rest = index % (seg.rows * seg.cols)
        r, c = divmod(rest, seg.cols)
        ty, tx = r * seg.seg_h, c * seg.seg_w
        ya, yb = max(ty, y0), min(ty + seg.seg_h, y0 + out.shape[0])
        xa, xb = max(tx, x0), min(tx + seg.seg_w, x0 + out.shape[1])
        if ya < yb and xa < xb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = 0

    def to_dask(self, level: int = 0, chunk_width: int | None = None) -> da.Array:
        """Lazy (h, w, 3) uint8 Dask array built on tifffile's Zarr store.

        Chunks are whole tiles, grouped along x up to ``chunk_width`` px (default 4096):
        with zarr 3 each chunk read costs an event-loop round trip, which for 512 px JPEG
        tiles is a large share of the decode time; grouping a tile row into ~8-tile chunks
        lets the store decode them concurrently (it decodes in threads, ``maxworkers=2``) and
        amortises the overhead. Strips are grouped into >= 256-row chunks. Decode errors
        surface as :class:`SlideError` at compute time.
        """
        level = self._check_level(level)
        arrays = []
        for n, part in enumerate(self._levels[level]):
            ch = list(part.chunks)
            cy, cx = ch[part.yax], ch[part.xax]
            ych = cy * max(1, -(-_MIN_BAND_ROWS // cy)) if cy < _MIN_BAND_ROWS else cy
            width = chunk_width or _DASK_CHUNK_WIDTH
            xch = cx * max(1, width // cx)
            chunks = tuple(
                ych if i == part.yax else xch if i == part.xax else part.zarr.shape[i]
                for i in range(part.zarr.ndim)
            )
            source = _WrappedZarr(self, part, level)
            name = f"slide-{uuid.uuid4().hex}-{level}-{n}"
            arr = da.from_array(
                source,
                chunks=chunks,
                name=name,
                asarray=True,
                inline_array=True,
                meta=np.empty((0,) * part.zarr.ndim, dtype=part.zarr.dtype),
            )
            idx = tuple(
                slice(None) if i in (part.yax, part.xax, part.cax) else 0
                for i in range(part.zarr.ndim)
            )
            arrays.append(part.to_yxc(arr[idx]))
        raw = arrays[0] if len(arrays) == 1 else da.concatenate(arrays, axis=2)
        raw = raw.rechunk({2: -1})
        pixels = self._pixels
        assert pixels is not None
        return raw.map_blocks(
            pixels.to_rgb8, dtype=np.uint8, chunks=(raw.chunks[0], raw.chunks[1], (3,))
        )

    def _close(self) -> None:
        self._tf.close()


class _WrappedZarr:
    """Array-like over a part's Zarr array whose reads raise SlideError naming the file."""

    def __init__(self, slide: TiffSlide, part: _TiffPart, level: int) -> None:
        self.slide, self.part, self.level = slide, part, level
        self.shape = tuple(part.zarr.shape)
        self.dtype = part.zarr.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.part.zarr[key])
        except MemoryError:
            raise
        except Exception as exc:
            p = self.part
            ys, xs = key[p.yax], key[p.xax]
            y0, x0 = ys.start or 0, xs.start or 0
            h = (ys.stop if ys.stop is not None else self.shape[p.yax]) - y0
            w = (xs.stop if xs.stop is not None else self.shape[p.xax]) - x0
            where = self.slide._locate_failure(self.level, y0, x0, h, w)
            raise SlideError(
                self.slide.path,
                f"cannot decode level {self.level} window y0={y0} x0={x0} {h}x{w} ({where}): "
                f"{_exc_text(exc)}",
            ) from exc


# ------------------------------------------------------------------------------------------
# rasterio backend
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GdalSource:
    """One GDAL dataset (a page, or an overview of one) and the bands it contributes."""

    name: str  # path or GTIFF_DIR:n:path
    overview: int | None
    bands: tuple[int, ...]


class RasterioSlide(SlideReader):
    """rasterio / GDAL backend with the same interface; one dataset handle per thread."""

    backend = "rasterio"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        size = _check_file(self.path)
        self._lock = threading.Lock()
        self._handles: list[Any] = []  # every handle opened, closed by close()
        self._free: dict[tuple[str, int | None], list[Any]] = {}  # idle handles per source
        try:
            self._setup(size)
        except BaseException:
            self._close()
            raise

    @staticmethod
    def _open(name: str, overview: int | None = None) -> Any:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        # slides are never georeferenced; a process-wide filter for just this category,
        # because warnings.catch_warnings() is not thread-safe (handles open in threads)
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
        if overview is None:
            return rasterio.open(name)
        return rasterio.open(name, overview_level=overview)

    def _setup(self, size: int) -> None:
        from rasterio.enums import ColorInterp

        try:
            ds = self._open(str(self.path))
        except Exception as exc:
            raise SlideError(self.path, f"GDAL cannot open it: {_exc_text(exc)}") from exc
        with ds:
            if ds.driver != "GTiff":
                raise SlideError(self.path, f"not a TIFF file (GDAL driver {ds.driver})")
            desc = ds.tags().get("TIFFTAG_IMAGEDESCRIPTION", "") or ""
            is_svs = desc.startswith("Aperio")
            is_ome = "<OME" in desc
            subdatasets = list(ds.subdatasets)
        names = [str(self.path)] if (is_svs or not subdatasets) else subdatasets
        infos = []
        for name in names:
            try:
                with self._open(name) as sd:
                    infos.append((sd.height, sd.width, sd.count, sd.dtypes, sd.colorinterp))
            except Exception as exc:
                raise SlideError(self.path, f"GDAL cannot open {name}: {_exc_text(exc)}") from exc
        try:
            main, extra = _choose_images([(h, w, c) for h, w, c, _, _ in infos], is_ome)
        except ValueError as exc:
            raise SlideError(self.path, str(exc)) from exc

        h0, w0, count0, dtypes0, interp0 = infos[main[0]]
        if len(main) == 3:
            sources0 = [_GdalSource(names[i], None, (1,)) for i in main]
            channels = 3
            interp = [infos[i][4][0] for i in main]
        else:
            sources0 = [_GdalSource(names[main[0]], None, tuple(range(1, count0 + 1)))]
            channels = count0
            interp = list(interp0)
        with self._open(sources0[0].name) as sd:
            struct = sd.tags(ns="IMAGE_STRUCTURE")
            band_struct = sd.tags(1, ns="IMAGE_STRUCTURE")
            self._block = sd.block_shapes[0]
            comp = (sd.compression.name if sd.compression else "none").lower()
        nbits = band_struct.get("NBITS") or struct.get("NBITS")
        # GDAL shows MINISWHITE grey as a palette (an inverted grey ramp): read it as grey
        invert = struct.get("MINISWHITE", "").upper() == "YES"
        if ColorInterp.palette in interp and not invert:
            raise SlideError(self.path, "unsupported palette (indexed colour) image")
        if any(c in interp for c in (ColorInterp.cyan, ColorInterp.magenta, ColorInterp.black)):
            raise SlideError(self.path, "unsupported CMYK image")
        dtypes = {d for i in main for d in infos[i][3]}
        if len(dtypes) != 1:
            raise SlideError(self.path, f"bands of different sample formats {sorted(dtypes)}")

        # levels: GDAL overviews of level 0 (validated), plus further pages forming a pyramid
        candidates: list[tuple[tuple[int, int], list[_GdalSource]]] = [((h0, w0), sources0)]
        overview_shapes = []
        for src in sources0:
            shapes = []
            with self._open(src.name) as sd:
                n_ov = len(sd.overviews(1)) if sd.count else 0
            for k in range(n_ov):
                with self._open(src.name, k) as ov:
                    shapes.append((ov.height, ov.width))
            overview_shapes.append(shapes)
        if all(s == overview_shapes[0] for s in overview_shapes):
            for k, shp in enumerate(overview_shapes[0]):
                candidates.append((shp, [_GdalSource(s.name, k, s.bands) for s in sources0]))
        for group in extra:
            hh, ww = infos[group[0]][:2]
            candidates.append(
                ((hh, ww), [_GdalSource(names[i], None, s.bands) for i, s in zip(group, sources0)])
            )
        keep = _pyramid([c[0] for c in candidates])
        self._sources = [candidates[k][1] for k in keep]
        self.level_shapes = tuple(candidates[k][0] for k in keep)
        for level, sources in enumerate(self._sources):
            for src in sources:
                self._check_truncation(src, level, size)

        self._pixels = _make_pixels(
            self.path, dtypes.pop(), channels, invert, int(nbits) if nbits else None, self._probe
        )
        bh, bw = self._block
        grid = f"tiled {bh}x{bw}" if bw != w0 else f"strips of {bh} rows"
        self.layout = (
            f"GDAL {'channel pages' if len(sources0) > 1 else 'interleaved'} "
            f"{channels}-channel {self._pixels.dtype}, {grid}, {comp}, "
            f"{len(self.level_shapes)} level(s)"
        )

    def _check_truncation(self, src: _GdalSource, level: int, size: int) -> None:
        """A block whose offset + size passes the end of the file (GDAL 'TIFF' metadata)."""
        with self._dataset(src) as ds:
            self._check_blocks(ds, src, level, size)

    def _check_blocks(self, ds: Any, src: _GdalSource, level: int, size: int) -> None:
        bh, bw = ds.block_shapes[0]
        rows, cols = -(-ds.height // bh), -(-ds.width // bw)
        bands = (
            src.bands
            if ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND"
            else src.bands[:1]
        )
        for b in bands:
            for r in range(rows):
                for c in range(cols):
                    off = ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=b)
                    cnt = ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=b)
                    if off is None or cnt is None:
                        return  # not exposed (e.g. overview of another file)
                    end = int(off) + int(cnt)
                    if int(cnt) > 0 and end > size:
                        raise SlideError(
                            self.path,
                            f"truncated file: block (row {r}, col {c}) of band {b}, level {level} "
                            f"ends at byte {end} but the file has only {size} bytes",
                        )

    @contextmanager
    def _dataset(self, src: _GdalSource) -> Iterator[Any]:
        """Borrow a handle on ``src`` for one read.

        A GDAL dataset must not be used by two threads at once, so concurrent readers get
        their own handles; idle handles are reused, so their number is the peak number of
        concurrent reads, however many thread pools come and go.
        """
        key = (src.name, src.overview)
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path}: slide is closed")
            free = self._free.setdefault(key, [])
            ds = free.pop() if free else None
        if ds is None:
            ds = self._open(src.name, src.overview)
            with self._lock:
                self._handles.append(ds)
        try:
            yield ds
        finally:
            with self._lock:
                self._free.setdefault(key, []).append(ds)

    def _read_raw(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(x0, y0, w, h)
        parts = []
        for src in self._sources[level]:
            with self._dataset(src) as ds:
                parts.append(ds.read(list(src.bands), window=window))
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return np.moveaxis(arr, 0, -1)

    def _segment_rows(self, level: int) -> int:
        with self._dataset(self._sources[level][0]) as ds:
            return int(ds.block_shapes[0][0])

    def _segment_cols(self, level: int) -> int:
        with self._dataset(self._sources[level][0]) as ds:
            return int(ds.block_shapes[0][1])

    def to_dask(self, level: int = 0, chunk_width: int | None = None) -> da.Array:
        """Lazy (h, w, 3) uint8 Dask array of windowed GDAL reads over the block grid.

        Chunks are whole blocks, grouped to >= 256 rows and along x up to ``chunk_width``
        (default 4096) px, as in :meth:`TiffSlide.to_dask`.
        """
        level = self._check_level(level)
        lh, lw = self.level_shapes[level]
        bh, bw = self._segment_rows(level), self._segment_cols(level)
        ych = bh * max(1, -(-_MIN_BAND_ROWS // bh)) if bh < _MIN_BAND_ROWS else bh
        xch = bw * max(1, (chunk_width or _DASK_CHUNK_WIDTH) // bw) if bw < lw else lw

        def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
            assert block_info is not None
            (ya, yb), (xa, xb), _ = block_info[None]["array-location"]
            return self._read_rgb(level, ya, xa, yb - ya, xb - xa)

        return da.map_blocks(
            block,
            chunks=(_splits(lh, ych), _splits(lw, xch), (3,)),
            dtype=np.uint8,
            meta=np.empty((0, 0, 0), np.uint8),
            name=f"slide-{uuid.uuid4().hex}-{level}",
        )

    def _close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
            self._free = {}
        for ds in handles:
            try:
                ds.close()
            except Exception:
                pass


def open_slide(path: str | os.PathLike[str], backend: str = "tifffile") -> SlideReader:
    """Open a slide lazily with ``backend`` ("tifffile" or "rasterio"); SlideError if unusable."""
    if backend == "tifffile":
        return TiffSlide(path)
    if backend == "rasterio":
        return RasterioSlide(path)
    raise ConfigError(None, f"unknown slide backend {backend!r} (use one of {', '.join(BACKENDS)})")
