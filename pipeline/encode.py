"""Encoding a stored prediction: threshold, post-process and run-length encode it at full resolution.

:func:`pipeline.predict.predict_slide` stores its consensus at model resolution
(``scale = window / out_size``, 1/scale^2 of the slide's pixels) in a chunked Zarr
array. Only encoding goes back to full resolution, and the full-resolution mask of
a gigapixel slide never fits in memory, so this module is the one place that
streams it: the low-res map is read in column strips, upsampled (bilinear by
default, then thresholded, which gives smoother borders than nearest) and fed
straight into :class:`pipeline.rle.RLEEncoder`; the full-resolution mask never
exists beyond one strip. Optional post-processing (hole filling, removal of small
objects) runs on the low-res mask with ``scipy.ndimage``, which is cheap and bounded
by 1/scale^2 of the slide. :func:`run_encode` is the ``encode`` stage: RLE, polygons,
an overlay and the per-glomerulus results (:mod:`pipeline.objects`) of one prediction.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from scipy import ndimage

from pipeline.atomic import write_text_atomic
from pipeline.errors import ConfigError, DataError
from pipeline.predict import CHUNK_COLS, UPSAMPLES
from pipeline.progress import get_logger
from pipeline.thresholds import store_threshold

if TYPE_CHECKING:
    from pipeline.config import Config, PredictConfig
    from pipeline.slides import SlideReader

log = get_logger(__name__)

#: Low-res rows upsampled at a time inside a strip (bounds the float32 temporary).
ENCODE_ROW_BLOCK = 256
#: The attributes a prediction store must carry.
STORE_ATTRS = ("slide_shape", "scale")


# ---------------------------------------------------------------- encoding


def open_prediction(prob_zarr: str | os.PathLike[str] | Any) -> Any:
    """Open a store written by :func:`~pipeline.predict.predict_slide` (or pass a zarr array through), checked."""
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


def strip_width(arr: Any) -> int:
    """Columns read at a time: the array's column chunk (Zarr: an int, Dask: a tuple of sizes), else CHUNK_COLS."""
    chunks = getattr(arr, "chunks", None)
    if not chunks or len(chunks) < 2:
        return CHUNK_COLS
    cols = chunks[1]
    if isinstance(cols, (tuple, list)):  # Dask: the size of every chunk along the axis
        cols = max(cols, default=CHUNK_COLS)
    return max(1, int(cols))


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


def column_strips(arr: Any, strip: int) -> Iterator[tuple[int, int, np.ndarray]]:
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


def upsampled_blocks(
    block: np.ndarray, scale: int, mode: str, out_height: int, floor: float
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Full-res probabilities of a low-res block with one halo column each side, row block by row block.

    Yields ``(r0, r1, probs)``: full-res rows ``r0:r1`` of the strip, ``(r1 - r0, (w-2)*scale)``
    float32, or ``None`` where no probability of the block reaches ``floor`` (interpolation
    never exceeds its neighbours, so nothing there can reach it: glomeruli are sparse and
    most of a slide is skipped). ``bilinear``: half-pixel-centred bilinear interpolation
    (what upsampling the whole map at once would give); ``nearest``: each pixel repeated
    ``scale`` x ``scale``. Rows go ``ENCODE_ROW_BLOCK`` low-res rows at a time, which bounds
    the float32 temporary.
    """
    h, w = block.shape
    padded = np.concatenate([block[:1], block, block[-1:]], axis=0)  # halo rows (edge)
    for lr0 in range(0, h, ENCODE_ROW_BLOCK):
        lr1 = min(lr0 + ENCODE_ROW_BLOCK, h)
        r0, r1 = lr0 * scale, min(lr1 * scale, out_height)
        if r0 >= r1:
            return
        part = padded[lr0 : lr1 + 2]  # rows lr0-1 .. lr1 of the block
        if not (part >= floor).any():
            yield r0, r1, None
            continue
        if mode == "nearest":
            up = np.repeat(np.repeat(part[1:-1, 1:-1], scale, axis=0), scale, axis=1)
        else:
            t = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))[None, None]
            up = F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False)[0, 0]
            up = up[scale : (lr1 - lr0 + 1) * scale, scale : (w - 1) * scale].numpy()
        yield r0, r1, up[: r1 - r0]


def upsample_strip(block: np.ndarray, scale: int, threshold: float, mode: str, out_height: int) -> np.ndarray:
    """Low-res block with one halo column each side -> full-res bool strip (out_height, (w-2)*scale).

    ``prob >= threshold`` of :func:`upsampled_blocks` (bilinear: interpolate the
    probabilities, then threshold, which gives smoother borders than thresholding first).
    """
    out = np.zeros((out_height, (block.shape[1] - 2) * scale), bool)
    for r0, r1, probs in upsampled_blocks(block, scale, mode, out_height, threshold):
        if probs is not None:
            out[r0:r1] = probs >= threshold
    return out


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
    thr = store_threshold(cfg.threshold, getattr(arr, "attrs", {}), source)
    post = None
    if cfg.fill_holes or cfg.min_object_px > 0:
        raw = lowres_mask(arr, thr)
        post = postprocess(raw, scale, cfg.min_object_px, cfg.fill_holes)
        del raw
    mask = post if post is not None else (np.zeros(arr.shape, bool) if keep_mask else None)
    encoder = RLEEncoder(height, width)
    for c0, c1, block in column_strips(arr, strip_width(arr)):
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

    ``prob_zarr`` is a prediction store's path, or an open array: Zarr, Dask or NumPy.
    ``cfg.threshold`` "auto" takes the threshold the predict stage stored in the store's attrs.

    Upsampling is ``cfg.upsample`` (bilinear by default); ``cfg.fill_holes`` and
    ``cfg.min_object_px`` are applied at model resolution first. "" when empty.
    """
    return encode_prediction_full(prob_zarr, slide_shape, cfg).rle


# ---------------------------------------------------------------- stage entry point


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


def _recorded_tissue(prob_zarr: Any) -> Path | None:
    """The tissue mask :func:`~pipeline.predict.run_predict` recorded in the store's attrs, if it is there."""
    try:
        recorded = open_prediction(prob_zarr).attrs.get("tissue_png")
    except DataError:
        return None
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    log.info("no tissue mask given or recorded in the prediction store: no density of glomeruli")
    return None


def run_encode(
    prob_zarr,
    slide_path,
    out_rle,
    out_geojson,
    out_png,
    truth_rle: str | None,
    config: Config,
    thumbnail_png=None,
    *,
    out_objects=None,
    out_summary=None,
    out_sizes_png=None,
    tissue_png=None,
    slide_id: str | None = None,
) -> str:
    """Stage entry point: RLE (``{id}.rle``), polygons (``{id}.geojson``), overlay (``{id}.png``).

    Polygons come from the low-res mask (after post-processing) scaled to full-res
    coordinates; the overlay outlines the prediction (and the truth when given) on
    the tissue stage's thumbnail (``thumbnail_png``, else the ``{id}.thumb.png`` next
    to the tissue mask recorded by :func:`~pipeline.predict.run_predict`, else the
    slide read at ``1/tissue.downsample``). When asked, also the per-glomerulus results
    of :func:`pipeline.objects.write_object_results` from the same low-res mask:
    ``out_objects`` (``{id}.objects.csv``), ``out_summary`` (``{id}.summary.csv``: count
    and density per tissue area, from ``tissue_png`` or the tissue mask recorded in the
    store) and ``out_sizes_png`` (``{id}.sizes.png``). All written atomically; returns the RLE.
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
    if out_objects is not None or out_summary is not None or out_sizes_png is not None:
        from pipeline.objects import write_object_results
        from pipeline.slides import pixel_size_um

        write_object_results(
            slide_id or name, result.mask, result.scale, shape, prob_zarr, pixel_size_um(slide_path),
            tissue_png if tissue_png is not None else _recorded_tissue(prob_zarr),
            out_objects, out_summary, out_sizes_png,
        )  # fmt: skip
    if truth_rle is not None:
        from pipeline.metrics import dice_rle

        score = dice_rle(result.rle, truth_rle, shape)
        log.info("%s: %d objects in %.1f s, Dice vs truth %.4f", name, len(polygons), result.seconds, score)
    else:
        log.info("%s: %d objects encoded in %.1f s", name, len(polygons), result.seconds)
    return result.rle


__all__ = [
    "EncodeResult",
    "encode_prediction",
    "encode_prediction_full",
    "lowres_mask",
    "open_prediction",
    "postprocess",
    "run_encode",
    "upsample_strip",
]
