"""Sliding-window consensus over a whole slide -> probability map at model resolution.

Prediction (:func:`predict_slide`): windows of ``window`` px (1536) every
``window * (1 - overlap)`` px over the tissue are cut from slide blocks decoded and reduced
once (:mod:`pipeline.reduced`) by reader threads ahead of the model, batched through every
model of the ensemble under every test-time augmentation (:mod:`pipeline.inference`), and
blended by a weight map into band accumulators (:mod:`pipeline.consensus`) whose finished
rows stream into a chunked Zarr array at model resolution (``scale = window / out_size``).
Three threads overlap: reading, the model, and accumulation; memory is one band of windows
across the slide, never the slide.

Threshold, upsampling back to full resolution and RLE encoding of that map are
:mod:`pipeline.encode`.
"""

from __future__ import annotations

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
import zarr

from pipeline import thresholds
from pipeline.atomic import atomic_path
from pipeline.batch_size import resolve_batch_size
from pipeline.consensus import BandAccumulator, gaussian_weight, model_scale, weight_map, window_grid
from pipeline.errors import ConfigError, DataError
from pipeline.inference import Staging, check_tta, predict_batch, prepare_models
from pipeline.progress import get_logger, progress
from pipeline.reduced import ReducedSlide, read_window
from pipeline.stores import CHUNK_KEYS, MAP_COMPRESSORS

if TYPE_CHECKING:
    from pipeline.config import Config, PredictConfig
    from pipeline.slides import SlideReader
    from pipeline.tissue import TissueMask

log = get_logger(__name__)

#: ``predict.upsample`` modes of :mod:`pipeline.encode`, also checked by :func:`predict_slide`
#: so a bad setting fails before the prediction rather than after it.
UPSAMPLES = ("bilinear", "nearest")
#: Low-res columns per chunk of the store, and per strip when encoding.
CHUNK_COLS = 512


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
    tta = check_tta(cfg.tta)[1:]
    if cfg.upsample not in UPSAMPLES:
        raise ConfigError(None, f"predict.upsample must be one of {', '.join(UPSAMPLES)}, got {cfg.upsample!r}")
    height, width = (int(n) for n in reader.shape)
    map_shape = (math.ceil(height / scale), math.ceil(width / scale))
    grid = window_grid(
        (height, width), cfg.window, cfg.overlap, tissue if cfg.tissue_only else None, scale=scale, origin=origin
    )
    weight = weight_map(cfg.out_size, cfg.blend, cfg.sigma)
    models = prepare_models(models, device, cfg.channels_last)
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
            store=str(tmp), shape=map_shape, chunks=chunks, dtype="float16", fill_value=0.0, attributes=attrs,
            chunk_key_encoding=CHUNK_KEYS, compressors=MAP_COMPRESSORS,
            config={"write_empty_chunks": True},  # the accumulator writes only chunks windows touched
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
    staging = Staging(bs, cfg.out_size, device)
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
