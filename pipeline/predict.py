"""Sliding-window consensus over a whole slide, then streaming RLE encoding.

Prediction (:func:`predict_slide`): windows of ``window`` px (1536) every
``window * (1 - overlap)`` px over the tissue are read by a thread pool ahead of the
model, area-resized to the model's ``out_size`` (512), and batched through every
model of the ensemble under every test-time augmentation (sigmoid, then mean). Each
window's probabilities are multiplied by a weight map that falls off towards the
window border (a Gaussian as in nnU-Net / MONAI, computed once per window size) and
added into weighted-sum and weight-sum accumulators; the consensus is their ratio
(0 where no window counted). It lives at model resolution (``scale = window /
out_size``) in a chunked Zarr array, and the accumulators only ever hold one band of
windows (one window height at model resolution x the slide width): rows no later
window can touch are flushed to the store as the grid moves down. Memory is thus
O(width / scale * out_size), never the slide.

Encoding (:func:`encode_prediction`): the low-res map is read in column strips,
upsampled to full resolution (bilinear by default, then thresholded, which gives
smoother borders than nearest) and fed straight into :class:`pipeline.rle.RLEEncoder`;
the full-resolution mask never exists beyond one strip. Optional post-processing
(hole filling, removal of small objects) runs on the low-res mask with
``scipy.ndimage``, which is cheap and bounded by 1/scale^2 of the slide.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import zarr
from scipy import ndimage

from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.errors import ConfigError, DataError
from pipeline.progress import get_logger, progress

if TYPE_CHECKING:
    from pipeline.config import Config, PredictConfig
    from pipeline.slides import SlideReader
    from pipeline.tissue import TissueMask

log = get_logger(__name__)

TTA_NAMES = ("hflip", "vflip", "rot90")
BLENDS = ("gaussian", "constant")
UPSAMPLES = ("bilinear", "nearest")
#: Floor of the Gaussian weight (MONAI clamps its importance map likewise): border
#: pixels covered by a single window keep that window's prediction.
MIN_WEIGHT = 1e-3
#: Low-res columns per chunk of the store, and per strip when encoding.
CHUNK_COLS = 512
#: Low-res rows upsampled at a time inside a strip (bounds the float32 temporary).
ENCODE_ROW_BLOCK = 256
#: The attributes a prediction store must carry.
STORE_ATTRS = ("slide_shape", "scale")


# ---------------------------------------------------------------- weights and grid


@functools.lru_cache(maxsize=8)
def _weight_cached(size: int, blend: str, sigma: float) -> np.ndarray:
    if blend == "constant":
        w = np.ones((size, size), np.float32)
    else:
        centre = (size - 1) / 2.0  # symmetric, so flips (TTA) see the same weights
        s = sigma * size
        if s <= 0:
            raise ConfigError(None, f"predict.sigma must be > 0, got {sigma}")
        g = np.exp(-0.5 * ((np.arange(size) - centre) / s) ** 2)
        w = np.outer(g, g)
        w = np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)
    w.setflags(write=False)
    return w


def gaussian_weight(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 Gaussian importance map, max 1, floored at ``MIN_WEIGHT``.

    ``sigma`` is a fraction of ``size`` (nnU-Net's ``sigma_scale``: 0.125 = 1/8).
    Cached: computed once per (size, sigma) and returned read-only.
    """
    return _weight_cached(int(size), "gaussian", float(sigma))


def weight_map(size: int, blend: str = "gaussian", sigma: float = 0.125) -> np.ndarray:
    """The blending weights of one window at model resolution: ``gaussian`` or ``constant``."""
    if blend not in BLENDS:
        raise ConfigError(None, f"predict.blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    return _weight_cached(int(size), blend, float(sigma))


def model_scale(cfg: PredictConfig) -> int:
    """Full-res pixels per model pixel (``window / out_size``); must be an integer."""
    if cfg.window <= 0 or cfg.out_size <= 0 or cfg.window % cfg.out_size:
        raise ConfigError(
            None, f"predict.window ({cfg.window}) must be a positive multiple of predict.out_size ({cfg.out_size})"
        )
    return cfg.window // cfg.out_size


def _axis_positions(n: int, size: int, stride: int, origin: int) -> list[int]:
    """Window starts along one axis, in units of the grid (model pixels).

    Starts fall every ``stride`` on the lattice through ``origin`` (the first one at
    or before 0, possibly negative = padded), and the last window is aligned to the
    far border so the whole axis is covered without extra padding.
    """
    if n <= size:
        return [0]  # one window, padded past the far border
    offset = origin % stride
    starts = list(range(offset - stride if offset else 0, n - size, stride))
    starts.append(n - size)
    return starts


def window_grid(
    slide_shape: tuple[int, int],
    window: int,
    overlap: float,
    tissue: TissueMask | None = None,
    *,
    scale: int = 1,
    origin: tuple[int, int] = (0, 0),
    min_tissue: float = 0.0,
) -> pd.DataFrame:
    """Windows (``y0, x0`` full-res, sorted row-major; ``tissue`` when known) covering the slide.

    The stride is ``window * (1 - overlap)`` rounded to a multiple of ``scale`` so
    every window starts on a model pixel; the last row/column is aligned to the
    border of the model-resolution map (``ceil(H / scale) * scale``), so at most
    ``scale - 1`` px of padding. ``origin`` (full-res px) shifts the lattice (e.g. by
    half a stride, for the seam test); windows reaching before 0 are padded. With a
    tissue mask, windows whose tissue fraction is not above ``min_tissue`` are dropped.
    """
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(None, f"predict.overlap must be in [0, 1), got {overlap}")
    if scale <= 0 or window % scale:
        raise ConfigError(None, f"window {window} is not a multiple of the model scale {scale}")
    height, width = slide_shape
    size = window // scale
    stride = max(1, int(round(size * (1.0 - overlap))))
    oy, ox = (int(round(o / scale)) for o in origin)
    ys = _axis_positions(math.ceil(height / scale), size, stride, oy)
    xs = _axis_positions(math.ceil(width / scale), size, stride, ox)
    y0, x0 = (a.ravel() * scale for a in np.meshgrid(np.asarray(ys, np.int64), np.asarray(xs, np.int64), indexing="ij"))
    grid = pd.DataFrame({"y0": y0.astype(np.int64), "x0": x0.astype(np.int64)})
    if tissue is not None:
        frac = tissue.window_fractions(y0, x0, window, window)  # padding counts as glass
        grid["tissue"] = frac
        grid = grid[frac > min_tissue].reset_index(drop=True)
    return grid


# ---------------------------------------------------------------- accumulation


class BandAccumulator:
    """Weighted-sum and weight-sum accumulators for one horizontal band of windows.

    ``out`` is the (H/scale, W/scale) store; the band holds ``band_height`` rows (one
    window at model resolution) starting at row ``top``. Windows must arrive in
    row-major grid order: :meth:`advance` to a window's row flushes every row above
    it (no later window can touch them) as ``sum / weight`` (0 where no weight).
    """

    def __init__(self, out: Any, band_height: int) -> None:
        self.out = out
        self.height, self.width = (int(n) for n in out.shape)
        self.band_height = int(band_height)
        self.sum = np.zeros((self.band_height, self.width), np.float32)
        self.weight = np.zeros((self.band_height, self.width), np.float32)
        self.top = 0
        self.rows_written = 0

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of each accumulator: (band_height, map width)."""
        return self.sum.shape

    def _flush(self, n: int) -> None:
        n = min(n, self.band_height, self.height - self.top)
        if n <= 0:
            return
        w = self.weight[:n]
        prob = np.zeros((n, self.width), np.float32)
        np.divide(self.sum[:n], w, out=prob, where=w > 0)
        self.out[self.top : self.top + n, :] = prob.astype(self.out.dtype)
        self.rows_written += n

    def advance(self, row: int) -> None:
        """Rows above ``row`` (model px) are final: write them and slide the band down."""
        d = row - self.top
        if d <= 0:
            return
        self._flush(d)
        if d >= self.band_height:
            self.sum.fill(0.0)
            self.weight.fill(0.0)
        else:
            keep = self.band_height - d
            self.sum[:keep] = self.sum[d:]
            self.weight[:keep] = self.weight[d:]
            self.sum[keep:] = 0.0
            self.weight[keep:] = 0.0
        self.top = row

    def add(self, row: int, col: int, prob: np.ndarray, weight: np.ndarray) -> None:
        """Add one window's ``prob * weight`` at model px (row, col); parts off the map are dropped."""
        if row > self.top:
            self.advance(row)
        h, w = prob.shape
        r0, r1 = max(row, 0), min(row + h, self.height)
        c0, c1 = max(col, 0), min(col + w, self.width)
        if r0 >= r1 or c0 >= c1:
            return
        if r1 - self.top > self.band_height or r0 < self.top:
            raise RuntimeError(f"window at row {row} outside the band [{self.top}, {self.top + self.band_height})")
        pr = slice(r0 - row, r1 - row)
        pc = slice(c0 - col, c1 - col)
        wt = weight[pr, pc]
        br = slice(r0 - self.top, r1 - self.top)
        self.sum[br, c0:c1] += prob[pr, pc] * wt
        self.weight[br, c0:c1] += wt

    def finish(self) -> None:
        """Flush everything still in the band."""
        self.advance(self.height)


# ---------------------------------------------------------------- model side


def _check_tta(names: Sequence[str]) -> list[str]:
    bad = [n for n in names if n not in TTA_NAMES]
    if bad:
        raise ConfigError(None, f"predict.tta: unknown transform(s) {', '.join(bad)}; use {', '.join(TTA_NAMES)}")
    return ["identity", *dict.fromkeys(names)]


def _tta_apply(x: torch.Tensor, name: str, inverse: bool = False) -> torch.Tensor:
    if name == "hflip":
        return torch.flip(x, dims=(3,))
    if name == "vflip":
        return torch.flip(x, dims=(2,))
    if name == "rot90":
        return torch.rot90(x, k=-1 if inverse else 1, dims=(2, 3))
    return x


def _logits(y: Any, size: tuple[int, int]) -> torch.Tensor:
    """The first output channel as (N, 1, h, w) logits at the input size."""
    if isinstance(y, dict):
        y = next(iter(y.values()))
    if isinstance(y, (tuple, list)):
        y = y[0]
    if y.ndim == 3:
        y = y[:, None]
    y = y[:, :1]
    if tuple(y.shape[-2:]) != tuple(size):
        y = F.interpolate(y.float(), size=size, mode="bilinear", align_corners=False)
    return y


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def predict_batch(
    models: Sequence[torch.nn.Module],
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    tta: Sequence[str] = (),
    amp: bool = True,
    channels_last: bool = True,
) -> np.ndarray:
    """(N, h, w, 3) uint8 windows -> (N, h, w) float32 probabilities.

    Mean of ``sigmoid(model(t(x)))`` mapped back by ``t^-1``, over every model and
    every TTA transform (identity included): ensembles average in probability space.
    """
    from pipeline.augment import to_tensor

    names = _check_tta(tta)
    x = to_tensor(images, mean, std, device)  # uint8 moved first, normalised on the device
    cuda = device.type == "cuda"
    if cuda and channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    size = tuple(x.shape[-2:])
    total: torch.Tensor | None = None
    with torch.inference_mode(), _autocast(device, amp):
        for model in models:
            for name in names:
                y = _logits(model(_tta_apply(x, name)), size)
                p = torch.sigmoid(_tta_apply(y.float(), name, inverse=True))
                total = p if total is None else total + p
    assert total is not None
    return (total[:, 0] / (len(models) * len(names))).float().cpu().numpy()


def _prepare(models: Sequence[torch.nn.Module], device: torch.device, channels_last: bool) -> list[torch.nn.Module]:
    out = []
    for m in models:
        m = m.to(device).eval()
        if device.type == "cuda" and channels_last:
            m = m.to(memory_format=torch.channels_last)
        out.append(m)
    return out


# ---------------------------------------------------------------- reading


def read_window(reader: SlideReader, y0: int, x0: int, size: int, out_size: int) -> np.ndarray:
    """One (size, size) window at (y0, x0) (glass outside the slide), area-resized to ``out_size``.

    The same area resize as the training tiles (``tiles.resize_area``), so the model
    sees what it was trained on. ``reader.read`` must be thread-safe (both backends are).
    """
    from pipeline.tiles import resize_area

    return resize_area(reader.read(y0, x0, size, size, fill=255), out_size)


@dataclass
class PredictStats:
    """What one :func:`predict_slide` did and where its time went (seconds).

    ``read_s`` is summed over the loader threads (read + area resize), so with
    several threads it can exceed the wall time; ``wait_s`` is how long the model
    waited for the loader (0 when reading keeps up). ``accumulate_s`` includes the
    flushes to the Zarr store.
    """

    windows: int = 0
    read_s: float = 0.0
    wait_s: float = 0.0
    model_s: float = 0.0
    accumulate_s: float = 0.0
    total_s: float = 0.0
    accumulator_shape: tuple[int, int] = (0, 0)
    store_shape: tuple[int, int] = (0, 0)
    store_chunks: tuple[int, int] = (0, 0)
    rows_written: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_slide(
    reader: SlideReader,
    models: Sequence[torch.nn.Module],
    tissue: TissueMask | None,
    cfg: PredictConfig,
    out_zarr: str | os.PathLike[str],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    *,
    origin: tuple[int, int] = (0, 0),
    slide_id: str | None = None,
    extra_attrs: dict[str, Any] | None = None,
) -> PredictStats:
    """Consensus probability map at model resolution -> Zarr array ``out_zarr`` (atomic).

    The array is (ceil(H / scale), ceil(W / scale)) float16, chunked (stride rows x
    ``CHUNK_COLS``), with attrs ``slide_shape``, ``scale`` and the settings used.
    ``tissue`` (with ``cfg.tissue_only``) restricts windows to those with tissue;
    a slide without any yields an all-zero map. ``origin`` shifts the window grid.
    """
    if not models:
        raise ConfigError(None, "predict: no model given")
    device = torch.device(device)
    scale = model_scale(cfg)
    tta = _check_tta(cfg.tta)[1:]
    if cfg.upsample not in UPSAMPLES:
        raise ConfigError(None, f"predict.upsample must be one of {', '.join(UPSAMPLES)}, got {cfg.upsample!r}")
    height, width = (int(n) for n in reader.shape)
    map_shape = (math.ceil(height / scale), math.ceil(width / scale))
    grid = window_grid(
        (height, width), cfg.window, cfg.overlap, tissue if cfg.tissue_only else None, scale=scale, origin=origin
    )
    weight = weight_map(cfg.out_size, cfg.blend, cfg.sigma)
    models = _prepare(models, device, cfg.channels_last)
    stride_rows = max(1, int(round(cfg.out_size * (1.0 - cfg.overlap))))
    chunks = (min(stride_rows, map_shape[0]), min(CHUNK_COLS, map_shape[1]))
    stats = PredictStats(windows=len(grid), store_shape=map_shape, store_chunks=chunks)
    attrs = {
        "slide_shape": [height, width],
        "scale": scale,
        "window": cfg.window,
        "out_size": cfg.out_size,
        "overlap": cfg.overlap,
        "blend": cfg.blend,
        "sigma": cfg.sigma,
        "tta": list(tta),
        "models": len(models),
        "origin": [int(o) for o in origin],
        "windows": len(grid),
        "slide": str(getattr(reader, "path", "")),
        "dtype": "float16 probability",
    }
    if slide_id is not None:
        attrs["slide_id"] = slide_id
    attrs.update(extra_attrs or {})
    log.info(
        "%s: %d windows of %d px (overlap %.2f, %s blend, tta %s, %d model(s)) -> %s map %s",
        slide_id or attrs["slide"], len(grid), cfg.window, cfg.overlap, cfg.blend, list(tta) or "none",
        len(models), "x".join(map(str, map_shape)), out_zarr,
    )
    start = time.perf_counter()
    with atomic_path(out_zarr) as tmp:
        store = zarr.create_array(
            store=str(tmp), shape=map_shape, chunks=chunks, dtype="float16", fill_value=0.0, attributes=attrs
        )
        acc = BandAccumulator(store, cfg.out_size)
        stats.accumulator_shape = acc.shape
        _run_windows(reader, models, grid, cfg, weight, acc, scale, mean, std, device, stats, slide_id)
        t = time.perf_counter()
        acc.finish()
        stats.accumulate_s += time.perf_counter() - t
        stats.rows_written = acc.rows_written
        stats.total_s = time.perf_counter() - start
        store.attrs.update({"timings": {k: round(getattr(stats, k), 3) for k in ("read_s", "wait_s", "model_s", "accumulate_s", "total_s")}})
    log.info(
        "%s: done in %.1f s (read %.1f s in threads, waited %.1f s, model %.1f s, accumulate %.1f s)",
        slide_id or attrs["slide"], stats.total_s, stats.read_s, stats.wait_s, stats.model_s, stats.accumulate_s,
    )
    return stats


def _run_windows(
    reader: SlideReader,
    models: Sequence[torch.nn.Module],
    grid: pd.DataFrame,
    cfg: PredictConfig,
    weight: np.ndarray,
    acc: BandAccumulator,
    scale: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    stats: PredictStats,
    slide_id: str | None,
) -> None:
    """Loader threads -> model (this thread) -> accumulator thread, each ``prefetch`` batches apart."""
    positions = grid[["y0", "x0"]].to_numpy(np.int64)
    bs = max(1, cfg.batch_size)
    batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
    ahead = max(1, cfg.prefetch)
    lock = threading.Lock()
    read_time = [0.0]

    def load(y0: int, x0: int) -> np.ndarray:
        t = time.perf_counter()
        out = read_window(reader, int(y0), int(x0), cfg.window, cfg.out_size)
        with lock:
            read_time[0] += time.perf_counter() - t
        return out

    acc_time = [0.0]

    def accumulate(batch: np.ndarray, probs: np.ndarray) -> None:
        t = time.perf_counter()
        for (y0, x0), p in zip(batch, probs, strict=True):
            acc.add(int(y0) // scale, int(x0) // scale, p, weight)
        acc_time[0] += time.perf_counter() - t

    loader = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix="predict-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-accumulate")
    try:
        queue: deque[tuple[np.ndarray, list[Future]]] = deque()
        todo: Iterator[np.ndarray] = iter(batches)

        def submit_next() -> None:
            batch = next(todo, None)
            if batch is not None:
                queue.append((batch, [loader.submit(load, y, x) for y, x in batch]))

        for _ in range(ahead + 1):
            submit_next()
        pending: deque[Future] = deque()
        for _ in progress(range(len(batches)), total=len(batches), desc=f"predict {slide_id or ''}".strip(), logger=log):
            batch, futures = queue.popleft()
            t = time.perf_counter()
            images = np.stack([f.result() for f in futures])
            stats.wait_s += time.perf_counter() - t
            submit_next()
            t = time.perf_counter()
            probs = predict_batch(models, images, mean, std, device, cfg.tta, cfg.amp, cfg.channels_last)
            stats.model_s += time.perf_counter() - t
            pending.append(writer.submit(accumulate, batch, probs))
            while len(pending) > ahead:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
    stats.read_s += read_time[0]
    stats.accumulate_s += acc_time[0]


# ---------------------------------------------------------------- encoding


def open_prediction(prob_zarr: str | os.PathLike[str] | Any) -> Any:
    """Open a store written by :func:`predict_slide` (or pass a zarr array through), checked."""
    if not isinstance(prob_zarr, (str, os.PathLike)):
        return prob_zarr
    path = Path(prob_zarr)
    if not path.exists():
        raise DataError(path, "prediction store not found (run the predict stage first)")
    try:
        arr = zarr.open_array(store=str(path), mode="r")
    except Exception as err:  # zarr raises several unrelated types for a bad store
        raise DataError(path, f"not a readable Zarr array: {err}") from err
    missing = [k for k in STORE_ATTRS if k not in arr.attrs]
    if missing or arr.ndim != 2:
        raise DataError(path, f"not a prediction store (2-D array with attrs {', '.join(STORE_ATTRS)})")
    return arr


def _check_store(arr: Any, slide_shape: tuple[int, int], source: Any) -> int:
    attrs = dict(getattr(arr, "attrs", {}) or {})
    scale = int(attrs.get("scale", 0))
    height, width = slide_shape
    if scale <= 0:
        if height % arr.shape[0] == 0:  # a plain array: infer
            scale = height // arr.shape[0]
        else:
            raise DataError(source, "prediction store has no 'scale' attribute")
    if "slide_shape" in attrs and tuple(attrs["slide_shape"]) != (height, width):
        raise DataError(source, f"prediction is for a slide of {tuple(attrs['slide_shape'])}, not {(height, width)}")
    if tuple(arr.shape) != (math.ceil(height / scale), math.ceil(width / scale)):
        raise DataError(source, f"map shape {tuple(arr.shape)} does not match slide {(height, width)} at scale {scale}")
    return scale


def lowres_mask(arr: Any, threshold: float, band: int = 1024) -> np.ndarray:
    """``prob >= threshold`` of the whole low-res map (bool, 1/scale^2 of the slide), read in bands."""
    h, w = arr.shape
    out = np.zeros((h, w), bool)
    for r in range(0, h, band):
        out[r : r + band] = np.asarray(arr[r : r + band]) >= threshold
    return out


def postprocess(mask: np.ndarray, scale: int, min_object_px: int = 0, fill_holes: bool = False) -> np.ndarray:
    """Fill holes in each object and drop objects under ``min_object_px`` full-res px, at low res.

    Objects are 8-connected; an object's area counts ``scale^2`` full-res px per
    low-res pixel (after filling). Holes are filled per object (a gap between two
    touching glomeruli is not a hole of either).
    """
    if not fill_holes and min_object_px <= 0:
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    min_lr = min_object_px / float(scale * scale)
    if not fill_holes:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_lr
        keep[0] = False
        return keep[labels]
    out = np.zeros_like(mask, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = ndimage.binary_fill_holes(labels[sl] == i)
        if obj.sum() >= min_lr:
            out[sl] |= obj
    return out


def _strips(arr: Any, strip: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(c0, c1, block) per column strip: ``arr[:, c0-1 : c1+1]`` float32, edge-replicated at the borders.

    Each strip is read once (one read ahead, for the right halo column).
    """
    w = arr.shape[1]
    bounds = [(c, min(c + strip, w)) for c in range(0, w, strip)]
    nxt = np.asarray(arr[:, bounds[0][0] : bounds[0][1]], np.float32)
    left = nxt[:, :1]
    for i, (c0, c1) in enumerate(bounds):
        cur = nxt
        nxt = np.asarray(arr[:, bounds[i + 1][0] : bounds[i + 1][1]], np.float32) if i + 1 < len(bounds) else None
        right = nxt[:, :1] if nxt is not None else cur[:, -1:]
        yield c0, c1, np.concatenate([left, cur, right], axis=1)
        left = cur[:, -1:]


def upsample_strip(block: np.ndarray, scale: int, threshold: float, mode: str, out_height: int) -> np.ndarray:
    """Low-res block with one halo column each side -> full-res bool strip (out_height, (w-2)*scale).

    ``bilinear``: half-pixel-centred bilinear interpolation of the probabilities
    (what upsampling the whole map at once would give), then ``>= threshold``;
    ``nearest``: threshold, then repeat each pixel ``scale`` x ``scale``. Rows go
    ``ENCODE_ROW_BLOCK`` at a time (bounding the float32 temporary), and blocks with
    nothing at or above the threshold are skipped: glomeruli are sparse.
    """
    h, w = block.shape
    out = np.zeros((h * scale, (w - 2) * scale), bool)
    padded = np.concatenate([block[:1], block, block[-1:]], axis=0)  # halo rows (edge)
    for r0 in range(0, h, ENCODE_ROW_BLOCK):
        r1 = min(r0 + ENCODE_ROW_BLOCK, h)
        part = padded[r0 : r1 + 2]  # rows r0-1 .. r1 of the block
        if not (part >= threshold).any():
            continue  # interpolation cannot reach the threshold: stays False
        if mode == "nearest":
            up = np.repeat(np.repeat(part[1:-1, 1:-1] >= threshold, scale, axis=0), scale, axis=1)
        else:
            t = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))[None, None]
            up = F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False)[0, 0]
            up = (up[scale : (r1 - r0 + 1) * scale, scale : (w - 1) * scale] >= threshold).numpy()
        out[r0 * scale : r1 * scale] = up
    return out[:out_height]


@dataclass
class EncodeResult:
    """The RLE plus what :func:`run_encode` reuses: the low-res mask and its scale."""

    rle: str
    mask: np.ndarray | None
    scale: int
    seconds: float = 0.0


def encode_prediction_full(
    prob_zarr: str | os.PathLike[str] | Any,
    slide_shape: tuple[int, int],
    cfg: PredictConfig,
    keep_mask: bool = False,
) -> EncodeResult:
    """:func:`encode_prediction`, also returning the (post-processed) low-res mask if asked."""
    from pipeline.rle import RLEEncoder

    t0 = time.perf_counter()
    source = prob_zarr if isinstance(prob_zarr, (str, os.PathLike)) else None
    arr = open_prediction(prob_zarr)
    height, width = (int(n) for n in slide_shape)
    scale = _check_store(arr, (height, width), source)
    if cfg.upsample not in UPSAMPLES:
        raise ConfigError(None, f"predict.upsample must be one of {', '.join(UPSAMPLES)}, got {cfg.upsample!r}")
    thr = float(cfg.threshold)
    post = None
    if cfg.fill_holes or cfg.min_object_px > 0:
        raw = lowres_mask(arr, thr)
        post = postprocess(raw, scale, cfg.min_object_px, cfg.fill_holes)
        del raw
    mask = post if post is not None else (np.zeros(arr.shape, bool) if keep_mask else None)
    encoder = RLEEncoder(height, width)
    strip = int(arr.chunks[1]) if hasattr(arr, "chunks") else CHUNK_COLS
    for c0, c1, block in _strips(arr, strip):
        if post is not None:
            lo, hi = max(c0 - 1, 0), min(c1 + 1, arr.shape[1])
            pb = post[:, lo:hi]
            pb = np.concatenate([pb[:, :1]] * (c0 == 0) + [pb] + [pb[:, -1:]] * (c1 == arr.shape[1]), axis=1)
            # post-processing flipped some pixels: pin them to 1 (filled) or 0 (removed) so the
            # interpolated map stays on the same side of the threshold there
            flipped = pb != (block >= thr)
            block = np.where(flipped, pb.astype(np.float32), block)
        elif mask is not None:
            mask[:, c0:c1] = block[:, 1:-1] >= thr
        full = upsample_strip(block, scale, thr, cfg.upsample, height)
        encoder.add_columns(full[:, : min(c1 * scale, width) - c0 * scale])
    rle = encoder.finish()
    return EncodeResult(rle=rle, mask=mask if keep_mask else None, scale=scale, seconds=time.perf_counter() - t0)


def encode_prediction(prob_zarr: str | os.PathLike[str] | Any, slide_shape: tuple[int, int], cfg: PredictConfig) -> str:
    """Full-resolution RLE of ``prob >= cfg.threshold``, streamed in column strips.

    Upsampling is ``cfg.upsample`` (bilinear by default); ``cfg.fill_holes`` and
    ``cfg.min_object_px`` are applied at model resolution first. "" when empty.
    """
    return encode_prediction_full(prob_zarr, slide_shape, cfg).rle


# ---------------------------------------------------------------- stage entry points


def _model_settings(meta: dict[str, Any], path: Path, config: Config) -> tuple[list[float], list[float], float]:
    """mean, std and training scale (tile size / out size) a checkpoint was trained with."""
    trained = meta.get("config") or {}
    model = trained.get("model") or {}
    tiles = trained.get("tiles") or {}
    mean = list(model.get("mean", config.model.mean))
    std = list(model.get("std", config.model.std))
    scale = float(tiles.get("size", config.tiles.size)) / float(tiles.get("out_size", config.tiles.out_size))
    if len(mean) != 3 or len(std) != 3:
        raise DataError(path, f"checkpoint config has a bad model.mean/std: {mean}, {std}")
    return mean, std, scale


def load_models(checkpoints: Sequence[str | os.PathLike[str]], device: torch.device, config: Config):
    """Load an ensemble; all members must share normalisation and the predict scale."""
    from pipeline.models import load_model

    if not checkpoints:
        raise ConfigError(None, "predict: no checkpoint given")
    models, settings = [], None
    want = config.predict.window / config.predict.out_size
    for ckpt in checkpoints:
        path = Path(ckpt)
        model, meta = load_model(path, device)
        mean, std, scale = _model_settings(meta, path, config)
        if abs(scale - want) > 1e-6:
            raise ConfigError(
                path,
                f"model was trained on tiles at 1/{scale:g} but predict.window/out_size is 1/{want:g}",
            )
        if settings is None:
            settings = (mean, std)
        elif not (np.allclose(settings[0], mean) and np.allclose(settings[1], std)):
            raise ConfigError(path, f"ensemble members disagree on normalisation: {settings} vs {(mean, std)}")
        models.append(model)
    assert settings is not None
    return models, settings[0], settings[1]


def run_predict(slide_path, checkpoints: list[Path], tissue_png, out_zarr, config: Config) -> None:
    """Stage entry point: ensemble + TTA consensus over one slide -> ``predictions/{id}.zarr``."""
    from pipeline.models import select_device
    from pipeline.slides import open_slide
    from pipeline.tissue import load_tissue

    cfg = config.predict
    device = select_device(cfg.device)
    models, mean, std = load_models(checkpoints, device, config)
    with open_slide(slide_path, backend=config.slides.backend) as reader:
        tissue = load_tissue(tissue_png, reader.shape) if (tissue_png and cfg.tissue_only) else None
        extra = {"tissue_png": str(tissue_png)} if tissue_png else {}
        predict_slide(
            reader, models, tissue, cfg, out_zarr, mean, std, device, slide_id=Path(slide_path).stem, extra_attrs=extra
        )


def _thumbnail(reader: SlideReader, prob_zarr: Any, thumbnail_png: Any, downsample: int) -> np.ndarray:
    """The tissue stage's thumbnail when known (given, or next to the mask named in the
    store's attrs), else the slide read at ``1/downsample`` (a whole pass over it)."""
    from pipeline.tissue import thumbnail_path

    candidates = [Path(thumbnail_png)] if thumbnail_png else []
    try:
        mask_png = open_prediction(prob_zarr).attrs.get("tissue_png")
    except DataError:
        mask_png = None
    if mask_png:
        candidates.append(thumbnail_path(mask_png))
    for path in candidates:
        if path.is_file():
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    return reader.read_region_downsampled(downsample)


def run_encode(
    prob_zarr,
    slide_path,
    out_rle,
    out_geojson,
    out_png,
    truth_rle: str | None,
    config: Config,
    thumbnail_png=None,
) -> str:
    """Stage entry point: RLE (``{id}.rle``), polygons (``{id}.geojson``), overlay (``{id}.png``).

    Polygons come from the low-res mask (after post-processing) scaled to full-res
    coordinates; the overlay outlines the prediction (and the truth when given) on
    the tissue stage's thumbnail (``thumbnail_png``, else the ``{id}.thumb.png`` next
    to the tissue mask recorded by :func:`run_predict`, else the slide read at
    ``1/tissue.downsample``). All written atomically; returns the RLE.
    """
    from pipeline.annotations import mask_to_polygons, write_geojson
    from pipeline.report import overlay_png
    from pipeline.slides import open_slide

    name = Path(slide_path).stem
    with open_slide(slide_path, backend=config.slides.backend) as reader:
        shape = tuple(int(n) for n in reader.shape)
        result = encode_prediction_full(prob_zarr, shape, config.predict, keep_mask=True)
        thumbnail = _thumbnail(reader, prob_zarr, thumbnail_png, config.tissue.downsample)
    write_text_atomic(out_rle, result.rle + "\n")
    assert result.mask is not None
    polygons = mask_to_polygons(result.mask, scale=float(result.scale), simplify_tolerance=float(result.scale) / 2)
    write_geojson(polygons, out_geojson)
    overlay_png(thumbnail, result.rle, truth_rle, shape, out_png)
    if truth_rle is not None:
        from pipeline.metrics import dice_rle

        score = dice_rle(result.rle, truth_rle, shape)
        log.info("%s: %d objects in %.1f s, Dice vs truth %.4f", name, len(polygons), result.seconds, score)
    else:
        log.info("%s: %d objects encoded in %.1f s", name, len(polygons), result.seconds)
    return result.rle


__all__ = [
    "BandAccumulator",
    "EncodeResult",
    "PredictStats",
    "encode_prediction",
    "encode_prediction_full",
    "gaussian_weight",
    "load_models",
    "lowres_mask",
    "model_scale",
    "open_prediction",
    "postprocess",
    "predict_batch",
    "predict_slide",
    "read_window",
    "run_encode",
    "run_predict",
    "upsample_strip",
    "weight_map",
    "window_grid",
]
