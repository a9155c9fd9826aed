"""Sliding-window consensus over a whole slide -> probability map at model resolution.

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

Threshold, upsampling back to full resolution and RLE encoding of that map are
:mod:`pipeline.encode`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import zarr

from pipeline import thresholds
from pipeline.atomic import atomic_path
from pipeline.batch_size import resolve_batch_size
from pipeline.config_checks import check_predict_scale
from pipeline.errors import ConfigError, DataError
from pipeline.input_norm import InputNorm
from pipeline.progress import get_logger, progress
from pipeline.reduced import ReducedSlide, read_window

if TYPE_CHECKING:
    from pipeline.config import Config, PredictConfig
    from pipeline.slides import SlideReader
    from pipeline.tissue import TissueMask

log = get_logger(__name__)

TTA_NAMES = ("hflip", "vflip", "rot90")
BLENDS = ("gaussian", "constant")
#: ``predict.upsample`` modes of :mod:`pipeline.encode`, also checked by :func:`predict_slide`
#: so a bad setting fails before the prediction rather than after it.
UPSAMPLES = ("bilinear", "nearest")
#: Floor of the Gaussian weight (MONAI clamps its importance map likewise): border
#: pixels covered by a single window keep that window's prediction.
MIN_WEIGHT = 1e-3
#: Low-res columns per chunk of the store, and per strip when encoding.
CHUNK_COLS = 512


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
    return check_predict_scale(cfg)


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


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 ``values`` as ``dtype``; float16 through torch, whose vectorised conversion is
    ~4x NumPy's and rounds identically (round to nearest even)."""
    if np.dtype(dtype) == np.float16:
        return torch.from_numpy(np.ascontiguousarray(values)).half().numpy()
    return values.astype(dtype)


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
        self._scratch = np.empty((self.band_height, self.band_height), np.float32)  # one window's prob * weight
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
        if w.any():  # rows no window touched keep the store's fill value (0): nothing to write
            prob = np.zeros((n, self.width), np.float32)
            np.divide(self.sum[:n], w, out=prob, where=w > 0)
            self.out[self.top : self.top + n, :] = _to_dtype(prob, self.out.dtype)
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
        weighted = np.multiply(prob[pr, pc], wt, out=self._scratch[: r1 - r0, : c1 - c0])
        self.sum[br, c0:c1] += weighted
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
    input_norm: InputNorm | None = None,
) -> np.ndarray:
    """(N, h, w, 3) uint8 windows -> (N, h, w) float32 probabilities.

    Mean of ``sigmoid(model(t(x)))`` mapped back by ``t^-1``, over every model and
    every TTA transform (identity included): ensembles average in probability space.
    ``input_norm``: images without a slide (patches), each normalised with its own
    statistics (:meth:`InputNorm.model_input`); windows of a slide get the slide's map
    from :func:`pipeline.slide_inputs.slide_input_norm` instead (``mean``/``std`` and the window map).
    """
    from pipeline.augment import to_tensor

    names = _check_tta(tta)
    if input_norm is not None and input_norm.active:
        x = input_norm.model_input(np.asarray(images), None, mean, std, device)
    else:
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
                total = p if total is None else total.add_(p)
        assert total is not None
        n = len(models) * len(names)
        mean_p = total[:, 0] if n == 1 else total[:, 0].div_(n)  # in place: a cheap model is memory-bound
    return mean_p.float().cpu().numpy()


def _prepare(models: Sequence[torch.nn.Module], device: torch.device, channels_last: bool) -> list[torch.nn.Module]:
    out = []
    for m in models:
        m = m.to(device).eval()
        if device.type == "cuda" and channels_last:
            m = m.to(memory_format=torch.channels_last)
        out.append(m)
    return out


# ---------------------------------------------------------------- reading


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
    blocks_read: int = 0  # slide blocks decoded and reduced (0: windows read one by one)

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
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    decode_once: bool = True,
) -> PredictStats:
    """Consensus probability map at model resolution -> Zarr array ``out_zarr`` (atomic).

    The array is (ceil(H / scale), ceil(W / scale)) float16, chunked (stride rows x
    ``CHUNK_COLS``), with attrs ``slide_shape``, ``scale`` and the settings used.
    ``tissue`` (with ``cfg.tissue_only``) restricts windows to those with tissue;
    a slide without any yields an all-zero map. ``origin`` shifts the window grid.
    ``normalise`` maps each uint8 window at model resolution before the model sees it
    (the slide's colour normalisation, :func:`pipeline.slide_inputs.slide_normaliser`). ``decode_once=False``
    reads every window on its own (the old data path, for the benchmark and tests).
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
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, models, cfg.out_size, device, cfg.amp,
                                                     cfg.channels_last))
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
        "batch_size": cfg.batch_size,
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
        _run_windows(
            reader, models, grid, cfg, weight, acc, scale, mean, std, device, stats, slide_id, normalise, decode_once
        )
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


class _Staging:
    """Where a batch of windows is stacked: plain NumPy on CPU; on CUDA a pinned host buffer,
    so the copy to the device is asynchronous (``non_blocking``) and no pageable bounce
    buffer is filled per batch. Two buffers alternate; :func:`predict_batch` ends with a
    device sync (``.cpu()``), so a buffer is free again when its turn comes."""

    def __init__(self, batch_size: int, size: int, device: torch.device) -> None:
        self.buffers: list[torch.Tensor] = []
        if device.type == "cuda":
            self.buffers = [torch.empty((batch_size, size, size, 3), dtype=torch.uint8).pin_memory() for _ in range(2)]
        self.turn = 0

    def stack(self, windows: list[np.ndarray]) -> np.ndarray | torch.Tensor:
        if not self.buffers:
            return np.stack(windows)
        buf = self.buffers[self.turn][: len(windows)]
        self.turn = 1 - self.turn
        np.stack(windows, out=buf.numpy())
        return buf


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
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    decode_once: bool = True,
) -> None:
    """Reader threads -> model (this thread) -> accumulator thread, each ``prefetch`` batches apart.

    ``decode_once``: windows are cut from slide blocks decoded and reduced once
    (:class:`pipeline.reduced.ReducedSlide`); otherwise each window is read and reduced
    on its own (four times the decoding at overlap 0.5; kept for the benchmark and the
    test that proves both give the same map).
    """
    positions = grid[["y0", "x0"]].to_numpy(np.int64)
    bs = max(1, cfg.batch_size)
    batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
    ahead = max(1, cfg.prefetch)
    lock = threading.Lock()
    read_time = [0.0]

    def load(y0: int, x0: int) -> np.ndarray:
        t = time.perf_counter()
        out = read_window(reader, int(y0), int(x0), cfg.window, cfg.out_size)
        if normalise is not None:
            out = normalise(out)
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
    blocks = ReducedSlide(reader, scale, loader, transform=normalise) if decode_once else None
    staging = _Staging(bs, cfg.out_size, device)
    try:
        queue: deque[tuple[np.ndarray, list[Callable[[], np.ndarray]]]] = deque()
        todo: Iterator[np.ndarray] = iter(batches)

        def submit_next() -> None:
            batch = next(todo, None)
            if batch is None:
                return
            if blocks is not None:
                queue.append((batch, [blocks.request(int(y), int(x), cfg.window) for y, x in batch]))
            else:
                queue.append((batch, [loader.submit(load, y, x).result for y, x in batch]))

        for _ in range(ahead + 1):
            submit_next()
        pending: deque[Future] = deque()
        for _ in progress(range(len(batches)), total=len(batches), desc=f"predict {slide_id or ''}".strip(), logger=log):
            batch, windows = queue.popleft()
            t = time.perf_counter()
            images = staging.stack([window() for window in windows])
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
    stats.read_s += read_time[0] if blocks is None else blocks.read_s
    stats.blocks_read = blocks.blocks_read if blocks is not None else 0
    stats.accumulate_s += acc_time[0]


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
    """Load an ensemble -> (models, mean, std, metas); members must share normalisation and the predict scale."""
    from pipeline.models import load_model

    if not checkpoints:
        raise ConfigError(None, "predict: no checkpoint given")
    models, metas, settings = [], [], None
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
        metas.append(meta)
    assert settings is not None
    return models, settings[0], settings[1], metas


def run_predict(
    slide_path, checkpoints: list[Path], tissue_png, out_zarr, config: Config, threshold_json=None
) -> None:
    """Stage entry point: ensemble + TTA consensus over one slide -> ``predictions/{id}.zarr``.

    With ``predict.threshold: auto`` the store's attrs also get the out-of-fold threshold
    and the Dice it came from (``threshold_json``, written by :func:`pipeline.oof.summarise`),
    which encoding uses.
    """
    from pipeline.models import select_device
    from pipeline.slide_inputs import slide_inputs
    from pipeline.slides import open_slide
    from pipeline.tissue import load_tissue

    cfg = config.predict
    thresholds.check_setting(cfg.threshold)
    extra: dict[str, Any] = {}
    if cfg.threshold == thresholds.AUTO:
        if threshold_json is None:
            raise ConfigError(None, "predict.threshold is 'auto' but no out-of-fold threshold was given "
                                    "(--threshold-json evaluation/threshold.json, written by oof-summary)")
        extra = thresholds.read_choice(threshold_json)
        log.info("predict.threshold auto: %.2f (%s)", extra[thresholds.STORE_ATTR], extra[thresholds.SOURCE_ATTR])
    device = select_device(cfg.device)
    models, mean, std, metas = load_models(checkpoints, device, config)
    with open_slide(slide_path, backend=config.slides.backend) as reader:
        tissue = load_tissue(tissue_png, reader.shape) if tissue_png else None
        normalise, mean, std, norm_attrs = slide_inputs(metas, checkpoints, tissue, slide_path, mean, std)
        extra.update(norm_attrs)
        if tissue_png:
            extra["tissue_png"] = str(tissue_png)
        predict_slide(
            reader, models, tissue if cfg.tissue_only else None, cfg, out_zarr, mean, std, device,
            slide_id=Path(slide_path).stem, extra_attrs=extra, normalise=normalise,
        )


__all__ = [
    "BandAccumulator",
    "PredictStats",
    "gaussian_weight",
    "load_models",
    "model_scale",
    "predict_batch",
    "predict_slide",
    "read_window",
    "run_predict",
    "weight_map",
    "window_grid",
]
