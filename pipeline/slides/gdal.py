"""The rasterio / GDAL backend (:class:`RasterioSlide`): windowed reads, overviews as levels.

Named ``gdal`` rather than ``rasterio`` so the module never shadows the library.
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import SlideError
from pipeline.slides.base import (
    _DASK_CHUNK_WIDTH,
    _MIN_BAND_ROWS,
    SlideReader,
    _check_file,
    _exc_text,
    _splits,
)
from pipeline.slides.layout import _choose_images, _pyramid
from pipeline.slides.pixels import _make_pixels


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
