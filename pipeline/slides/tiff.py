"""The tifffile backend: tifffile -> Zarr store -> Dask; windows and bands decoded tile by tile (:class:`TiffSlide`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import SlideError
from pipeline.progress import get_logger
from pipeline.slides.base import (
    _DASK_CHUNK_WIDTH,
    _MIN_BAND_ROWS,
    SlideReader,
    _check_file,
    _exc_text,
)
from pipeline.slides.layout import _ASSOCIATED, _choose_images, _pyramid
from pipeline.slides.pixels import _make_pixels
from pipeline.slides.segments import _JPEG, _Segments

# the package's name, as before the split into modules, so log lines stay the same
log = get_logger(__name__)


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
    """tifffile backend: tifffile -> Zarr store -> Dask; direct tile decoding for windows and bands (Zarr where a layout has no segments)."""

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
        parts = self._levels[level]
        if all(p.segments for p in parts):
            return self._decode_window(parts, level, y0, x0, h, w)
        arrays = [p.read(y0, x0, h, w) for p in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=2)

    def _decode_window(self, parts: list[_TiffPart], level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The window's tiles decoded straight into one array, as bands are.

        Why: the same pixels as the Zarr store gives (tifffile's own decode function, a
        missing tile reads as 0, Zarr's fill value), without Zarr's per-read asyncio
        machinery, which cost prediction's block reads more than a third of their time.
        """
        out = np.zeros((h, w, sum(p.channels for p in parts)), parts[0].zarr.dtype)
        self._decode_segments(list(self._channel_offsets(parts)), out, level, y0, x0)
        return out

    def _decode_segments(
        self, segs: list[tuple[_Segments, int]], out: np.ndarray, level: int, y0: int, x0: int, *, zero_missing: bool = False
    ) -> None:
        """Decode every segment overlapping ``out``'s window (rows y0.., columns x0..) into it.

        A segment never written reads as 0: left alone in a zeroed ``out``, zeroed where
        ``out`` is reused memory (``zero_missing``). A segment that fails is named in the error.
        """
        h, w = out.shape[:2]
        for seg, chan0 in segs:
            for data, index in seg.read(seg.indices(y0, h, x0, w)):
                if data is None:
                    if zero_missing:
                        self._zero_segment(seg, out, y0, x0, index)
                    continue
                try:
                    seg.place(out, y0, x0, chan0, data, index)
                except Exception as exc:
                    raise SlideError(
                        self.path, f"cannot decode {seg.describe(index)}, level {level}: {_exc_text(exc)}"
                    ) from exc

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
                self._decode_segments(segs, out, level, y0, xa, zero_missing=direct)
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
