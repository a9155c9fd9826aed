"""Training tiles: windows over tissue (plus windows centred on glomeruli) -> Zarr.

A grid of ``size`` px windows (1536 by default) is laid over the slide and kept
where the low-res tissue mask says there is enough tissue; extra windows are
centred on each annotated glomerulus so positives are not always cut by the
grid. Windows start on the ``size / out_size`` lattice, so their images are cut
from slide blocks decoded and area-averaged to ``out_size`` (512) once
(:class:`pipeline.reduced.ReducedSlide`, ``workers`` threads; overlapping and
centred windows no longer decode the same tiles again), and written with their
truth masks into one Zarr v3 group per slide: ``images`` (N, out, out, 3) and
``masks`` (N, out, out), one tile per chunk. With a dask.distributed scheduler
each window is read on its own by the workers, a batch at a time. Memory is a few
rows of blocks and a batch of tiles, never the slide; the store is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd
import zarr
from scipy import ndimage
from zarr.codecs import ZstdCodec

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, DataError
from pipeline.input_norm import IntensityStats, intensity_stats
from pipeline.progress import get_logger, progress
from pipeline.resize import mask_fraction
from pipeline.stain import ColourStats, tissue_stats
from pipeline.stores import CHUNK_KEYS

if TYPE_CHECKING:
    from pipeline.config import Config, TilesConfig
    from pipeline.slides import SlideReader
    from pipeline.tissue import TissueMask

log = get_logger(__name__)

Truth = Callable[[int, int, int, int], np.ndarray]
COLOUR_ATTR = "colour_stats"  # the slide's tissue colour statistics, for colour normalisation
INPUT_ATTR = "input_stats"  # the slide's intensity statistics, for model.input_norm (pipeline.input_norm)
INDEX_COLUMNS = ["slide", "tile", "y0", "x0", "tissue", "positive"]
# zstd 1: same ratio as zarr's default level on H&E tiles (~0.56) at about half the cost
COMPRESSION_LEVEL = 1


# ---------------------------------------------------------------- windows


def _positions(n: int, size: int, stride: int, align: int = 1) -> np.ndarray:
    """Window starts along one axis: every ``stride``, the last at the edge (on the ``align`` lattice,
    so up to ``align - 1`` px of the far edge may stay outside every window)."""
    if n <= size:
        return np.zeros(1, np.int64)  # one window, padded past the edge
    starts = list(range(0, n - size + 1, stride))
    last = (n - size) // align * align
    if starts[-1] < last:
        starts.append(last)
    return np.asarray(starts, np.int64)


def _clamp(start: np.ndarray, n: int, size: int, align: int = 1) -> np.ndarray:
    """Keep windows inside the slide when it is larger than them, else at 0 (padded)."""
    return np.clip(start, 0, max(n - size, 0) // align * align).astype(np.int64)


def tile_lattice(cfg: TilesConfig) -> int:
    """Full-res px per tile px (``size / out_size``) when whole, else 1.

    Windows placed on this lattice are cut from slide blocks decoded and reduced once
    (:class:`pipeline.reduced.ReducedSlide`) instead of each being decoded on its own.
    """
    return cfg.size // cfg.out_size if cfg.out_size > 0 and cfg.size % cfg.out_size == 0 else 1


def check_tiles_config(cfg: TilesConfig) -> None:
    """ConfigError naming the ``tiles.*`` key whose value the stage cannot work with.

    The workflow's schema checks these too; a stage run by hand with ``--settings`` only gets this.
    """
    for key in ("size", "stride", "out_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(None, f"tiles.{key}: must be a positive number of pixels, got {getattr(cfg, key)}")
    for key in ("min_tissue", "mask_threshold"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(None, f"tiles.{key}: must be a fraction in [0, 1], got {getattr(cfg, key)}")
    if cfg.max_tiles_per_slide is not None and cfg.max_tiles_per_slide < 1:
        raise ConfigError(None, f"tiles.max_tiles_per_slide: must be at least 1 or null, got {cfg.max_tiles_per_slide}")


def tile_grid(tissue: TissueMask, slide_shape: tuple[int, int], cfg: TilesConfig) -> pd.DataFrame:
    """Grid windows (``cfg.size`` px every ``cfg.stride``) with tissue >= ``cfg.min_tissue``.

    Columns ``y0, x0, tissue`` (tissue fraction of the window from the low-res mask).
    """
    height, width = slide_shape
    check_tiles_config(cfg)
    lattice = tile_lattice(cfg)
    align = lattice if cfg.stride % lattice == 0 else 1  # an off-lattice stride gains nothing from it
    ys = _positions(height, cfg.size, cfg.stride, align)
    xs = _positions(width, cfg.size, cfg.stride, align)
    y0, x0 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    frac = tissue.window_fractions(y0, x0, cfg.size, cfg.size)
    keep = frac >= cfg.min_tissue
    return pd.DataFrame({"y0": y0[keep], "x0": x0[keep], "tissue": frac[keep]})


def centred_windows(
    centres: Sequence[tuple[float, float]], slide_shape: tuple[int, int], size: int, align: int = 1
) -> pd.DataFrame:
    """Windows of ``size`` px centred on each (y, x), clamped inside the slide; deduplicated.

    Starts are rounded to multiples of ``align`` (:func:`tile_lattice`: off centre by at most
    half a tile pixel) so the windows can be cut from blocks decoded once.
    """
    height, width = slide_shape
    c = np.asarray(list(centres), np.float64).reshape(-1, 2)
    y0 = _clamp(np.round((c[:, 0] - size / 2) / align).astype(np.int64) * align, height, size, align)
    x0 = _clamp(np.round((c[:, 1] - size / 2) / align).astype(np.int64) * align, width, size, align)
    out = pd.DataFrame({"y0": y0, "x0": x0}).drop_duplicates(ignore_index=True)
    return out.astype({"y0": np.int64, "x0": np.int64})


def select_windows(
    grid: pd.DataFrame, centred: pd.DataFrame, tissue: TissueMask, cfg: TilesConfig
) -> pd.DataFrame:
    """Grid + centred windows (``centred`` flag), deduplicated, capped at ``max_tiles_per_slide``.

    When capped, centred windows (the positives) come first, then the grid windows
    with the most tissue; deterministic, not a random subsample, so a cap never drops
    the rare positives. The result is sorted by position for sequential reads.
    """
    centred = centred.copy()
    if len(centred):
        centred["tissue"] = tissue.window_fractions(
            centred["y0"].to_numpy(), centred["x0"].to_numpy(), cfg.size, cfg.size
        )
    centred["centred"] = True
    grid = grid.assign(centred=False)
    both = pd.concat([centred, grid], ignore_index=True) if len(centred) else grid
    both = both.drop_duplicates(subset=["y0", "x0"], keep="first", ignore_index=True)
    cap = cfg.max_tiles_per_slide
    if cap is not None and len(both) > cap:
        both = both.sort_values(["centred", "tissue"], ascending=False, kind="stable").head(cap)
    both = both.sort_values(["y0", "x0"], kind="stable", ignore_index=True)
    return both.astype({"y0": np.int64, "x0": np.int64, "tissue": np.float64, "centred": bool})


def centres_from_runs(
    runs: np.ndarray, slide_shape: tuple[int, int], stride: int = 16
) -> list[tuple[int, int]]:
    """(y, x) centres of the objects of a column-major RLE, from a 1/``stride`` rasterisation.

    Each run is a vertical segment of one column (or, rarely, spills over into the
    next columns); marking the low-res cells it touches costs memory of the low-res
    mask only. Objects are 8-connected components there; the centre is that of the
    bounding box, accurate to ``stride`` px.
    """
    height, width = slide_shape
    runs = np.asarray(runs, np.int64).reshape(-1, 2)
    runs = runs[runs[:, 1] > 0]
    low = np.zeros((math.ceil(height / stride), math.ceil(width / stride)), bool)
    if len(runs) == 0:
        return []
    start, end = runs[:, 0], runs[:, 0] + runs[:, 1]  # [start, end) flat column-major
    c0, c1 = start // height, (end - 1) // height
    one = c0 == c1
    r0 = (start - c0 * height)[one] // stride
    r1 = (end - 1 - c0 * height)[one] // stride
    cols = c0[one] // stride
    counts = r1 - r0 + 1
    total = int(counts.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    low[np.repeat(r0, counts) + offsets, np.repeat(cols, counts)] = True
    for s, e, a, b in zip(start[~one], end[~one], c0[~one], c1[~one], strict=True):
        low[(s - a * height) // stride :, a // stride] = True  # rare: runs over column ends
        if b > a + 1:
            low[:, (a + 1) // stride : (b - 1) // stride + 1] = True
        low[: (e - 1 - b * height) // stride + 1, b // stride] = True
    labels, n = ndimage.label(low, structure=np.ones((3, 3), bool))
    out = []
    for sl in ndimage.find_objects(labels)[:n]:
        ys, xs = sl
        y = min((ys.start + ys.stop) * stride / 2, height - 1)
        x = min((xs.start + xs.stop) * stride / 2, width - 1)
        out.append((int(round(y)), int(round(x))))
    return out


# ---------------------------------------------------------------- extraction


class SlideRef:
    """Stand-in for a reader on dask.distributed workers: opens the slide once per worker
    process and keeps it open (a pickled reader would reopen it for every batch)."""

    _open: dict[tuple[str, str], Any] = {}

    def __init__(self, path: str | os.PathLike[str], backend: str) -> None:
        self.path, self.backend = str(path), backend

    def reader(self) -> SlideReader:
        key = (self.path, self.backend)
        if key not in SlideRef._open:
            from pipeline.slides import open_slide

            SlideRef._open[key] = open_slide(self.path, backend=self.backend)
        return SlideRef._open[key]


def _extract_one(
    source: SlideReader | SlideRef,
    truth: Truth | None,
    y0: int,
    x0: int,
    size: int,
    out_size: int,
    mask_threshold: float,
    slide_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, float]:
    """One window: (image (out, out, 3) uint8, mask (out, out) uint8, positive fraction)."""
    from pipeline.reduced import read_window

    reader = source.reader() if isinstance(source, SlideRef) else source
    image = read_window(reader, y0, x0, size, out_size)
    return (image, *_window_mask(truth, y0, x0, size, out_size, mask_threshold, slide_shape, reader))


def _window_mask(
    truth: Truth | None,
    y0: int,
    x0: int,
    size: int,
    out_size: int,
    mask_threshold: float,
    slide_shape: tuple[int, int],
    reader: object = None,
) -> tuple[np.ndarray, float]:
    """A window's truth at tile resolution (uint8 0/1) and its full-resolution positive fraction."""
    mask = np.zeros((out_size, out_size), np.uint8)
    positive = 0.0
    if truth is None:
        return mask, positive
    height, width = slide_shape
    ya, yb = max(y0, 0), min(y0 + size, height)
    xa, xb = max(x0, 0), min(x0 + size, width)
    if yb > ya and xb > xa:
        part = np.asarray(truth(int(ya), int(xa), int(yb - ya), int(xb - xa)))
        if part.shape != (yb - ya, xb - xa):
            raise DataError(
                getattr(reader, "path", None),
                f"truth window at y0={ya} x0={xa} has shape {part.shape}, "
                f"expected {(yb - ya, xb - xa)}",
            )
        count = np.count_nonzero(part)
        positive = count / (size * size)
        if count:  # most windows have no glomerulus: no mask to reduce for them
            if part.shape == (size, size) and part.dtype == np.uint8 and part.max() <= 1:
                full = part  # inside the slide and already 0/1: no copy
            else:
                full = np.zeros((size, size), np.uint8)  # 0/1; padding past the slide stays 0
                full[ya - y0 : yb - y0, xa - x0 : xb - x0] = part > 0
            mask = (mask_fraction(full, out_size) >= mask_threshold - 1e-6).astype(np.uint8)
    return mask, positive


def _from_blocks(
    reader: SlideReader,
    truth: Truth | None,
    y0s: np.ndarray,
    x0s: np.ndarray,
    cfg: TilesConfig,
    slide_shape: tuple[int, int],
) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """Tiles in window order, images cut from slide blocks decoded and reduced once.

    Windows on the :func:`tile_lattice` are cut from :class:`~pipeline.reduced.ReducedSlide`
    (the same pixels as reading and reducing each one); any other is read on its own.
    ``cfg.workers`` threads decode blocks and rasterise masks ahead of the caller.
    """
    from pipeline.reduced import ReducedSlide, read_window

    scale = tile_lattice(cfg)
    ahead = 4 * max(1, cfg.workers)
    pool = ThreadPoolExecutor(max(1, cfg.workers), thread_name_prefix="tiles-read")
    blocks = ReducedSlide(reader, scale, pool)
    args = (cfg.size, cfg.out_size, cfg.mask_threshold, slide_shape)
    pending: deque[tuple[Callable[[], np.ndarray], Future]] = deque()
    try:
        for y0, x0 in zip(y0s.tolist(), x0s.tolist(), strict=True):
            if y0 % scale == 0 and x0 % scale == 0:
                image = blocks.request(y0, x0, cfg.size)
            else:
                image = pool.submit(read_window, reader, y0, x0, cfg.size, cfg.out_size).result
            pending.append((image, pool.submit(_window_mask, truth, y0, x0, *args, reader)))
            if len(pending) > ahead:
                image, mask = pending.popleft()
                yield (image(), *mask.result())
        while pending:
            image, mask = pending.popleft()
            yield (image(), *mask.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _scheduler(cfg: TilesConfig) -> tuple[Any, dict[str, Any], Any]:
    """(scheduler for dask.compute, its kwargs, a distributed client to close or None)."""
    name = cfg.scheduler
    if name in ("threads", "synchronous", "sync", "single-threaded"):
        if name == "threads":
            return "threads", {"num_workers": max(1, cfg.workers)}, None
        return "synchronous", {}, None
    if ":" not in name:  # "tcp://host:8786", "host:8786", "inproc://..."
        raise ConfigError(
            None,
            f"tiles.scheduler: expected threads, synchronous or a dask.distributed address, got {name!r}",
        )
    from distributed import Client

    try:
        client = Client(name, set_as_default=False, timeout=30)
    except OSError as err:
        raise ConfigError(None, f"tiles.scheduler: cannot reach the dask scheduler {name}: {err}") from err
    return client, {}, client


def _stream(compute: Callable[[int, int], list], n: int, batch: int) -> Iterator[Any]:
    """Results of ``compute(a, b)`` batch after batch, one at a time; the next batch is
    computed while the caller consumes (and writes) the current one. Two batches in
    memory at most."""
    spans = [(a, min(a + batch, n)) for a in range(0, n, batch)]
    if not spans:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(compute, *spans[0])
        for k in range(len(spans)):
            done = pending.result()
            if k + 1 < len(spans):
                pending = pool.submit(compute, *spans[k + 1])
            yield from done


def extract_tiles(
    reader: SlideReader,
    truth: Truth | None,
    windows: pd.DataFrame,
    out_zarr: str | os.PathLike[str],
    cfg: TilesConfig,
    slide_id: str,
    extra_attrs: dict | None = None,
) -> pd.DataFrame:
    """Read, resize and store every window; returns the index rows.

    ``truth(y0, x0, height, width)`` gives the full-resolution 0/1 mask of a window
    inside the slide (None: masks are all zero). Rows: slide, tile (row in the
    store), y0, x0, tissue (from ``windows`` when it has that column), positive
    (full-resolution mask fraction of the window). ``extra_attrs`` go into the store's
    attributes (the slide's colour statistics). The store appears at ``out_zarr`` only
    once complete.
    """
    out_zarr = Path(out_zarr)
    slide_shape = tuple(int(v) for v in reader.shape)
    y0s = windows["y0"].to_numpy(np.int64)
    x0s = windows["x0"].to_numpy(np.int64)
    n, out = len(windows), cfg.out_size
    tissue = windows["tissue"].to_numpy(np.float64) if "tissue" in windows else np.full(n, np.nan)
    positive = np.zeros(n, np.float64)
    scheduler, kwargs, client = _scheduler(cfg)
    source: SlideReader | SlideRef = (
        reader if client is None else SlideRef(reader.path, getattr(reader, "backend", "") or "tifffile")
    )
    batch = max(8, 4 * max(1, cfg.workers))
    args = (cfg.size, out, cfg.mask_threshold, slide_shape)

    def compute(a: int, b: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
        # reader and truth are one graph node each (shipped once to a distributed worker)
        src = dask.delayed(source, traverse=False)
        tru = dask.delayed(truth, traverse=False)
        tasks = [dask.delayed(_extract_one)(src, tru, y0s[i], x0s[i], *args) for i in range(a, b)]
        return list(dask.compute(*tasks, scheduler=scheduler, **kwargs))

    try:
        with atomic_path(out_zarr) as tmp:
            root = zarr.open_group(tmp, mode="w", zarr_format=3)
            images = root.create_array(
                "images",
                shape=(n, out, out, 3),
                dtype="uint8",
                chunks=(1, out, out, 3),
                compressors=ZstdCodec(level=COMPRESSION_LEVEL),
                fill_value=0,
                dimension_names=("tile", "y", "x", "channel"),
                chunk_key_encoding=CHUNK_KEYS,
                # a tile of tissue is never all 0: skip zarr's per-chunk "all fill value?" pass
                config={"write_empty_chunks": True},
            )
            masks = root.create_array(
                "masks",
                shape=(n, out, out),
                dtype="uint8",
                chunks=(1, out, out),
                compressors=ZstdCodec(level=COMPRESSION_LEVEL),
                fill_value=0,
                dimension_names=("tile", "y", "x"),
                chunk_key_encoding=CHUNK_KEYS,
                config={"write_empty_chunks": True},  # every tile has its mask chunk, 0 or not
            )
            buffer: list[tuple[np.ndarray, np.ndarray, float]] = []
            results = (
                _from_blocks(reader, truth, y0s, x0s, cfg, slide_shape)
                if client is None and tile_lattice(cfg) > 1
                else _stream(compute, n, batch)
            )
            for i, result in enumerate(progress(results, total=n, desc=f"tiles {slide_id}", logger=log)):
                buffer.append(result)
                if len(buffer) == batch or i == n - 1:  # a whole batch: zarr compresses chunks in parallel
                    a = i + 1 - len(buffer)
                    images[a : i + 1] = np.stack([r[0] for r in buffer])
                    masks[a : i + 1] = np.stack([r[1] for r in buffer])
                    positive[a : i + 1] = [r[2] for r in buffer]
                    buffer.clear()
            index = pd.DataFrame(
                {
                    "slide": slide_id,
                    "tile": np.arange(n, dtype=np.int64),
                    "y0": y0s,
                    "x0": x0s,
                    "tissue": tissue,
                    "positive": positive,
                },
                columns=INDEX_COLUMNS,
            )
            root.attrs.update(
                {
                    "slide": slide_id,
                    "slide_shape": list(slide_shape),
                    "size": cfg.size,
                    "out_size": out,
                    "mask_threshold": cfg.mask_threshold,
                    "has_truth": truth is not None,
                    "index": {c: index[c].tolist() for c in INDEX_COLUMNS if c != "slide"},
                    **(extra_attrs or {}),
                }
            )
    finally:
        if client is not None:
            client.close()
    log.info("%s: %d tiles (%d positive) -> %s", slide_id, n, int((positive > 0).sum()), out_zarr)
    return index


def open_tile_store(path: str | os.PathLike[str]) -> tuple[zarr.Array, zarr.Array]:
    """(images, masks) of a tile store written by :func:`extract_tiles`, read-only."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "tile store not found (run the tiles stage first)")
    try:
        root = zarr.open_group(path, mode="r")
        images, masks = root["images"], root["masks"]
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise DataError(path, f"not a tile store (needs arrays 'images' and 'masks'): {err}") from err
    if images.ndim != 4 or masks.ndim != 3 or images.shape[:3] != masks.shape:
        raise DataError(path, f"inconsistent tile store: images {images.shape}, masks {masks.shape}")
    return images, masks


def _slide_stats_attr(path: str | os.PathLike[str], key: str, what: str) -> Any:
    """A per-slide statistics attribute of a tile store; DataError saying how to get it when absent."""
    attrs = zarr.open_group(Path(path), mode="r").attrs
    if key not in attrs:
        raise DataError(path, f"tile store has no {what} (written before it existed, or its tissue mask had no "
                              "{id}.thumb.png): delete it and rerun the tiles stage (after the tissue stage for a "
                              "missing thumbnail)")
    return attrs[key]


def read_colour_stats(path: str | os.PathLike[str]) -> ColourStats:
    """The slide's colour statistics a tile store records (from its tissue thumbnail; :mod:`pipeline.stain`)."""
    return ColourStats.from_dict(_slide_stats_attr(path, COLOUR_ATTR, "colour statistics"))


def read_input_stats(path: str | os.PathLike[str]) -> IntensityStats:
    """The slide's intensity statistics a tile store records (from its tissue thumbnail; :mod:`pipeline.input_norm`)."""
    return IntensityStats.from_dict(_slide_stats_attr(path, INPUT_ATTR, "intensity statistics for model.input_norm"))


def read_tile_index(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The index rows stored in a tile store's attributes (same as the per-slide CSV)."""
    open_tile_store(path)  # same checks and errors
    attrs = zarr.open_group(Path(path), mode="r").attrs
    cols = dict(attrs["index"])
    df = pd.DataFrame({"slide": attrs["slide"], **cols})
    return df[INDEX_COLUMNS].astype({"tile": np.int64, "y0": np.int64, "x0": np.int64})


# ---------------------------------------------------------------- stage


def _truth_and_centres(
    slide_id: str, truth_rle: str | None, polygons_path, slide_shape: tuple[int, int], want_centres: bool
) -> tuple[Truth | None, list[tuple[int, int]]]:
    """Truth callable (RLE first, else polygons, else None) and glomerulus centres."""
    from pipeline import annotations, rle

    truth: Truth | None = None
    centres: list[tuple[int, int]] = []
    poly = Path(polygons_path) if polygons_path is not None else None
    geoms = None
    if poly is not None and poly.exists() and (truth_rle is None or want_centres):
        geoms = annotations.read_polygons(poly)  # the glomerulus file: every feature is one
    if truth_rle is not None:
        runs = rle.parse(truth_rle, slide_shape, source=f"train.csv (slide {slide_id})")

        def truth(y0: int, x0: int, height: int, width: int) -> np.ndarray:
            return rle.decode_window(runs, slide_shape, y0, x0, height, width)

        if want_centres and geoms is None:
            centres = centres_from_runs(runs, slide_shape)
    elif geoms is not None:
        truth = annotations.as_index(geoms)  # STRtree built once; called per window

    if want_centres and geoms is not None:
        centres = [(int(y), int(x)) for y, x in annotations.centres(geoms)]
    return truth, centres


def run_tiles(
    slide_path,
    slide_id: str,
    truth_rle: str | None,
    polygons_path,
    tissue_png,
    out_zarr,
    out_index_csv,
    config: Config,
) -> pd.DataFrame:
    """Stage entry point: tile one slide into ``out_zarr`` and write its index CSV.

    A slide without truth (no ``truth_rle``, no polygons) is a DataError naming it: its
    tiles would all train as background. The workflow leaves such slides out of training
    at planning (:func:`pipeline.dataset.planned_slides`), as the out-of-fold check needs truth too.
    """
    from pipeline.slides import open_slide
    from pipeline.tissue import load_tissue

    cfg = config.tiles
    check_tiles_config(cfg)
    if truth_rle is None and (polygons_path is None or not Path(polygons_path).exists()):
        raise DataError(
            slide_path,
            f"slide {slide_id!r} has no train.csv row and no train/{slide_id}.json: no truth, and tiles "
            "without truth would all train as background (add its truth, or move it out of train/)",
        )
    with open_slide(slide_path, backend=config.slides.backend) as reader:
        shape = tuple(int(v) for v in reader.shape)
        tissue = load_tissue(tissue_png, shape)
        truth, centres = _truth_and_centres(
            slide_id, truth_rle, polygons_path, shape, cfg.centre_on_glomeruli
        )
        grid = tile_grid(tissue, shape, cfg)
        centred = centred_windows(centres, shape, cfg.size, tile_lattice(cfg))
        windows = select_windows(grid, centred, tissue, cfg)
        log.info(
            "%s: %d grid + %d centred windows -> %d tiles", slide_id, len(grid), len(centred), len(windows)
        )
        # no thumbnail, no colours: a store without statistics refuses colour normalisation by name
        colour = {} if tissue.thumbnail_from_mask else {COLOUR_ATTR: tissue_stats(tissue.thumbnail, tissue.mask).as_dict(),
                                                        INPUT_ATTR: intensity_stats(tissue.thumbnail, tissue.mask).as_dict()}
        index = extract_tiles(reader, truth, windows, out_zarr, cfg, slide_id, extra_attrs=colour)
    with atomic_path(out_index_csv) as tmp:
        index.to_csv(tmp, index=False)
    return index
